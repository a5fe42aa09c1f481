"""Folder runs: output names, existing outputs, and a run that goes on past every kind of bad
file with a per-file report; the stylize task and its command line (exit status)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_nets import FailingIdentity, photo, tiny_unet

from portrait_toon.config import ConfigError, compose_config
from portrait_toon.data.images import read_image, write_image
from portrait_toon.inference.folder import REPORT_NAME, output_paths, stylize_paths
from portrait_toon.inference.stylizer import Stylizer
from portrait_toon.nets.unet import UNet
from portrait_toon.tasks.stylize import stylize
from portrait_toon.utils.generator_file import save_stylizer

INFERENCE_LOGGER = "portrait_toon.inference.folder"


@pytest.fixture(scope="module")
def net() -> UNet:
    return tiny_unet()


@pytest.fixture(scope="module")
def stylizer(net: UNet) -> Stylizer:
    return Stylizer(net)


@pytest.fixture
def exported(tmp_path: Path, net: UNet) -> Path:
    return save_stylizer(tmp_path / "run" / "stylizer.pt", net, meta={"step": 7})


def make_folder(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    good = write_image(root / "portrait.png", photo(97, 131, seed=3))
    nested = write_image(root / "group" / "wide.jpg", photo(40, 72, seed=4))
    whole = write_image(root / "whole.jpg", photo(64, 64, seed=5))
    broken = root / "broken.jpg"
    broken.write_bytes(whole.read_bytes()[:300])
    whole.unlink()
    (root / "readme.txt").write_text("not an image")
    return {"good": good, "nested": nested, "broken": broken}


def written_files(out_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file() and p.name != REPORT_NAME
    )


def test_folder_with_a_corrupt_file(
    tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture
) -> None:
    files = make_folder(tmp_path / "in")
    out_dir = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        report = stylize_paths(stylizer, tmp_path / "in", out_dir, progress=False)
    assert written_files(out_dir) == ["group/wide.png", "portrait.png"]
    assert read_image(out_dir / "portrait.png").shape == (97, 131, 3)
    assert read_image(out_dir / "group" / "wide.png").shape == (40, 72, 3)
    assert len(report.written) == 2 and not report.existing
    assert [path for path, _ in report.failed] == [files["broken"]]
    assert "truncated" in report.failed[0][1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("broken.jpg" in message for message in warnings)
    assert "stylized 2 of 3 images" in report.summary()


def test_every_failure_is_caught_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    good = photo(40, 56, seed=1)
    write_image(source / "a_good.png", good)
    png = write_image(source / "b_truncated.png", photo(64, 64, seed=2)).read_bytes()
    (source / "b_truncated.png").write_bytes(png[: len(png) // 2])
    (source / "c_not_an_image.jpg").write_text("hello")
    write_image(source / "d_bomb.png", photo(100, 100))  # over max_pixels below
    write_image(source / "e_oom.png", photo(20, 100))  # padded to 104 wide: MemoryError
    write_image(source / "f_bug.png", photo(20, 117))  # padded to 120 wide: RuntimeError
    Image.fromarray(good[:3, :5]).save(source / "g_tiny.png")  # 5 x 3 px: padded, processed
    write_image(source / "z_last_good.jpg", photo(30, 50, seed=3))

    out_dir = tmp_path / "out"
    failures = {104: MemoryError("no memory left"), 120: RuntimeError("something broke")}
    moody = FailingIdentity(failures=failures)  # e_oom is 104 px wide padded, f_bug 120
    report = stylize_paths(
        Stylizer(moody, tile=None), source, out_dir, max_pixels=9_000, progress=False
    )
    assert len(report.written) == 3 and len(report.failed) == 5
    assert written_files(out_dir) == ["a_good.png", "g_tiny.png", "z_last_good.png"]
    np.testing.assert_array_equal(read_image(out_dir / "a_good.png"), good)
    assert read_image(out_dir / "g_tiny.png", min_side=1).shape == (3, 5, 3)

    saved = json.loads((out_dir / REPORT_NAME).read_text())
    assert saved["num_inputs"] == 8 and saved["num_written"] == 3 and saved["num_failed"] == 5
    by_name = {Path(entry["input"]).name: entry for entry in saved["files"]}
    assert by_name["a_good.png"]["status"] == "written"
    assert by_name["a_good.png"]["size"] == {"width": 56, "height": 40}
    assert by_name["a_good.png"]["seconds"] >= 0 and by_name["a_good.png"]["error"] is None
    reasons = {name: entry["error"] for name, entry in by_name.items()}
    assert "truncated" in reasons["b_truncated.png"]
    assert "not an image" in reasons["c_not_an_image.jpg"]
    assert "max_pixels" in reasons["d_bomb.png"]
    assert "out of memory" in reasons["e_oom.png"] and "max_memory_mb" in reasons["e_oom.png"]
    assert reasons["f_bug.png"] == "RuntimeError: something broke"
    assert all(by_name[n]["status"] == "failed" for n in ("b_truncated.png", "f_bug.png"))
    assert saved["model"]["network"] == "FailingIdentity"


def test_rerun_keeps_existing_outputs_unless_asked(
    tmp_path: Path, stylizer: Stylizer, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path / "in")
    out_dir = tmp_path / "out"
    stylize_paths(stylizer, tmp_path / "in", out_dir, progress=False)
    target = out_dir / "portrait.png"
    os.utime(target, (1_000_000, 1_000_000))  # an old, recognisable mtime
    before = target.read_bytes()

    with caplog.at_level(logging.INFO, logger=INFERENCE_LOGGER):
        report = stylize_paths(stylizer, tmp_path / "in", out_dir, progress=False)
    assert target.stat().st_mtime == 1_000_000 and target.read_bytes() == before
    assert sorted(report.existing) == [out_dir / "group" / "wide.png", target]
    assert not report.written
    assert any("overwrite=true" in r.getMessage() for r in caplog.records)
    assert "2 output(s) already existed and were kept" in report.summary()

    report = stylize_paths(stylizer, tmp_path / "in", out_dir, overwrite=True, progress=False)
    assert len(report.written) == 2 and target.stat().st_mtime > 1_000_000
    assert target.read_bytes() == before  # same input, same net: same result


def test_single_file_and_suffix(tmp_path: Path, stylizer: Stylizer) -> None:
    source = write_image(tmp_path / "me.jpg", photo(50, 30))
    out = tmp_path / "out"
    report = stylize_paths(stylizer, source, out, ext="jpg", suffix="_toon", progress=False)
    assert report.written == [(source, tmp_path / "out" / "me_toon.jpg")]
    assert (tmp_path / "out" / "me_toon.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_output_names(tmp_path: Path) -> None:
    for name in ["a.jpg", "a.png", "b.png", "toons/old.png"]:
        write_image(tmp_path / name, photo(8, 8))
    pairs = output_paths(tmp_path, tmp_path / "toons")
    names = {src.name: out.relative_to(tmp_path / "toons").as_posix() for src, out in pairs}
    # same stem: the original suffix disambiguates; the output folder inside is not an input
    assert names == {"a.jpg": "a_jpg.png", "a.png": "a_png.png", "b.png": "b.png"}
    with pytest.raises(ValueError, match="replace its own input"):
        output_paths(tmp_path / "b.png", tmp_path)
    assert output_paths(tmp_path / "b.png", tmp_path, suffix="_toon")[0][1].name == "b_toon.png"
    with pytest.raises(ValueError, match="ext='gif' cannot be written"):
        output_paths(tmp_path, tmp_path / "out", ext="gif")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        output_paths(tmp_path / "nowhere", tmp_path / "out")


def test_library_never_prints(tmp_path: Path, stylizer: Stylizer, capsys) -> None:
    source = write_image(tmp_path / "a.png", photo(16, 16))
    stylize_paths(stylizer, source, tmp_path / "out", progress=False)
    assert capsys.readouterr().out == ""
    Image.open(tmp_path / "out" / "a.png").verify()


# ------------------------------------------------------------------------------- the task


def compose(tmp_path: Path, *overrides: str):
    return compose_config("stylize", overrides, output_dir=tmp_path / "run")


def test_task_stylizes_a_folder_and_writes_a_report(tmp_path: Path, exported: Path) -> None:
    make_folder(tmp_path / "in")
    cfg = compose(
        tmp_path,
        f"ckpt={exported.parent}",  # a run folder: its stylizer.pt
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "progress=false",
    )
    assert cfg.tile == "auto" and cfg.max_memory_mb is None  # the defaults
    report = stylize(cfg)
    assert len(report.written) == 2 and len(report.failed) == 1
    saved = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert saved["num_written"] == 2 and saved["num_failed"] == 1
    assert saved["model"]["source"] == str(exported)
    failed = [f for f in saved["files"] if f["status"] == "failed"]
    assert failed[0]["input"].endswith("broken.jpg")


def test_task_errors_name_the_key(tmp_path: Path, exported: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt is required.*python stylize.py ckpt="):
        stylize(compose(tmp_path, f"input={tmp_path}", f"output={tmp_path / 'o'}"))
    with pytest.raises(ConfigError, match="input is required"):
        stylize(compose(tmp_path, f"ckpt={exported}", f"output={tmp_path / 'o'}"))
    with pytest.raises(ConfigError, match="input=.*nowhere: no such file or folder"):
        stylize(compose(tmp_path, f"ckpt={exported}", f"input={tmp_path / 'nowhere'}", "output=o"))
    with pytest.raises(ConfigError, match="ckpt=.*missing.pt.*does not exist"):
        stylize(
            compose(tmp_path, f"ckpt={tmp_path / 'missing.pt'}", f"input={tmp_path}", "output=o")
        )
    for override, message in [
        ("tile=-5", "tile=-5"),
        ("precision=fp8", "precision='fp8'"),
        ("device=cpu precision=bf16", "precision=bf16 needs a CUDA device"),
        ("max_memory_mb=0", "max_memory_mb=0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            stylize(
                compose(
                    tmp_path, f"ckpt={exported}", f"input={tmp_path}", "output=o", *override.split()
                )
            )


def test_command_line_exit_status(tmp_path: Path, exported: Path, repo_root: Path) -> None:
    """The real entry point: Hydra composes conf/stylize.yaml, logs go to the run folder, and
    the exit status is 1 when a file failed (the others are still written)."""
    make_folder(tmp_path / "in")
    command = [
        sys.executable,
        str(repo_root / "stylize.py"),
        f"ckpt={exported}",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "progress=false",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert (tmp_path / "out" / "portrait.png").is_file()
    assert (tmp_path / "out" / "group" / "wide.png").is_file()
    assert (tmp_path / "out" / REPORT_NAME).is_file()
    (log_file,) = (tmp_path / "logs" / "stylize" / "runs").glob("*/stylize.log")
    log_text = log_file.read_text()
    assert "failed" in log_text and "broken.jpg" in log_text
    assert "stylized 2 of 3 images" in log_text

    (tmp_path / "in" / "broken.jpg").unlink()  # a clean folder: exit status 0
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
