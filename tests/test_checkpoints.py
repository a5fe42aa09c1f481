"""checkpoints.py, weights_registry.py and scripts/fetch_weights.py on files the tests build:
every container kind, refusal of hostile pickles, mismatch reports, missing-weight errors,
verification and the offline path of the fetcher (never a real download)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import sys
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from portrait_toon.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    extract_state_dict,
    load_into,
    load_state_dict_file,
    load_stylegan2_checkpoint,
)
from portrait_toon.nets.bisenet import BiSeNet
from portrait_toon.nets.vgg import vgg16, vgg19
from portrait_toon.weights_registry import (
    KNOWN_WEIGHTS,
    KnownWeight,
    MissingWeightsError,
    file_sha256,
    git_blob_sha1,
    resolve_weight,
    verify_weight_file,
)


def small_generator_sd(offset: float = 0.0) -> OrderedDict[str, torch.Tensor]:
    """A few keys shaped like a rosinality generator's (enough for the container logic)."""
    return OrderedDict(
        [
            ("style.1.weight", torch.full((4, 4), 1.0 + offset)),
            ("input.input", torch.full((1, 4, 4, 4), 2.0 + offset)),
            ("convs.0.conv.weight", torch.full((1, 4, 4, 3, 3), 3.0 + offset)),
            ("to_rgbs.0.bias", torch.full((1, 3, 1, 1), 4.0 + offset)),
        ]
    )


def small_discriminator_sd() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        [
            ("convs.0.0.weight", torch.ones(4, 3, 1, 1)),
            ("final_linear.0.weight", torch.ones(1, 4)),
        ]
    )


def manifest_state(path: Path, device: str = "meta") -> dict[str, torch.Tensor]:
    """A state_dict with a manifest's keys and shapes (meta tensors: no memory)."""
    manifest = json.loads(path.read_text())
    entries = {**manifest["params"], **manifest["buffers"]}
    return {
        k: torch.empty(
            entries[k]["shape"], dtype=getattr(torch, entries[k]["dtype"]), device=device
        )
        for k in manifest["state_dict_key_order"]
    }


class ManifestModule(nn.Module):
    """A module whose state_dict has exactly a manifest's layout (for mismatch reports)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        for key, value in manifest_state(path).items():
            *parents, leaf = key.split(".")
            module: nn.Module = self
            for name in parents:
                if not hasattr(module, name):
                    module.add_module(name, nn.Module())
                module = getattr(module, name)
            module.register_buffer(leaf, value)


# ----------------------------------------------------------------------------- containers


def test_converted_rosinality_file(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    g_ema, latent_avg = small_generator_sd(), torch.arange(512.0)
    torch.save({"g_ema": g_ema, "latent_avg": latent_avg}, path)
    parts = load_stylegan2_checkpoint(path)
    assert set(parts) == {"g_ema", "g", "d", "latent_avg"}
    assert list(parts["g_ema"]) == list(g_ema)
    assert torch.equal(parts["latent_avg"], latent_avg)
    assert parts["g"] is None and parts["d"] is None


def test_converted_file_with_g_and_d_prefers_g_ema(tmp_path):
    path = tmp_path / "converted.pt"
    torch.save(
        {
            "g_ema": small_generator_sd(0.0),
            "g": small_generator_sd(10.0),
            "d": small_discriminator_sd(),
            "latent_avg": torch.zeros(512),
        },
        path,
    )
    parts = load_stylegan2_checkpoint(path)
    assert parts["g_ema"]["style.1.weight"][0, 0] == 1.0  # g_ema, not g
    assert parts["g"]["style.1.weight"][0, 0] == 11.0
    assert list(parts["d"]) == list(small_discriminator_sd())
    assert extract_state_dict(torch.load(path, weights_only=True))["input.input"].max() == 2.0


def test_train_checkpoint_with_argparse_namespace(tmp_path):
    path = tmp_path / "train_010000.pt"
    args = argparse.Namespace(size=256, channel_multiplier=2, r1=10.0, augment=True)
    torch.save(
        {
            "g": small_generator_sd(10.0),
            "d": small_discriminator_sd(),
            "g_ema": small_generator_sd(),
            "g_optim": torch.optim.Adam([nn.Parameter(torch.zeros(2))]).state_dict(),
            "d_optim": torch.optim.Adam([nn.Parameter(torch.zeros(2))]).state_dict(),
            "args": args,
            "ada_aug_p": 0.25,
        },
        path,
    )
    # plain weights_only loading refuses the Namespace: the allowance is needed and works
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    raw = load_state_dict_file(path)
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].size == 256
    parts = load_stylegan2_checkpoint(path)
    assert parts["g_ema"]["style.1.weight"][0, 0] == 1.0
    assert parts["d"] is not None and parts["latent_avg"] is None


def test_jojogan_style_file_falls_back_to_g(tmp_path):
    path = tmp_path / "jojo.pt"
    torch.save({"g": small_generator_sd(5.0)}, path)
    parts = load_stylegan2_checkpoint(path)
    assert parts["g_ema"] is parts["g"]
    assert parts["g_ema"]["input.input"][0, 0, 0, 0] == 7.0


def test_bare_generator_and_discriminator_state_dicts(tmp_path):
    torch.save(small_generator_sd(), tmp_path / "g.pt")
    torch.save(small_discriminator_sd(), tmp_path / "d.pth")
    g_parts = load_stylegan2_checkpoint(tmp_path / "g.pt")
    d_parts = load_stylegan2_checkpoint(tmp_path / "d.pth")
    assert g_parts["g_ema"] is not None and g_parts["d"] is None
    assert d_parts["d"] is not None and d_parts["g_ema"] is None
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a StyleGAN2 generator"):
        load_stylegan2_checkpoint(tmp_path / "other.pt")
    torch.save({"epoch": torch.tensor(3), "optimizer": {"lr": 0.1}}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="no StyleGAN2 weights found"):
        load_stylegan2_checkpoint(tmp_path / "none.pt")


def test_dataparallel_module_prefix_is_stripped(tmp_path):
    prefixed = {f"module.{k}": v for k, v in small_generator_sd().items()}
    torch.save({"g_ema": prefixed, "latent_avg": torch.zeros(512)}, tmp_path / "dp.pt")
    parts = load_stylegan2_checkpoint(tmp_path / "dp.pt")
    assert list(parts["g_ema"]) == list(small_generator_sd())
    assert list(extract_state_dict(prefixed)) == list(small_generator_sd())


def test_lightning_container_and_prefix_selection(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1))
    ema = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1))
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state.update({f"net_ema.{k}": v for k, v in ema.state_dict().items()})
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 100, "state_dict": state, "loops": {}}, path)
    obj = load_state_dict_file(path)
    assert set(extract_state_dict(obj)) == set(state)
    only_ema = extract_state_dict(obj, prefix="net_ema.")
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1))
    load_into(target, only_ema, source=path, expected="tiny net")
    assert torch.equal(target[0].weight, ema[0].weight)
    with pytest.raises(CheckpointError, match="no keys start with 'disc.'"):
        extract_state_dict(obj, prefix="disc.")
    with pytest.raises(CheckpointError, match="no state_dict found"):
        extract_state_dict({"epoch": 1, "config": {"lr": 0.1}})


def test_safetensors_bare_and_flattened_container(tmp_path):
    net = nn.Conv2d(3, 8, 3)
    save_file(net.state_dict(), str(tmp_path / "conv.safetensors"))
    state = load_state_dict_file(tmp_path / "conv.safetensors")
    assert torch.equal(state["weight"], net.weight.detach())

    flat = {f"g_ema.{k}": v for k, v in small_generator_sd().items()}
    flat.update({f"d.{k}": v for k, v in small_discriminator_sd().items()})
    flat["latent_avg"] = torch.ones(512)
    save_file(flat, str(tmp_path / "sg2.safetensors"))
    parts = load_stylegan2_checkpoint(tmp_path / "sg2.safetensors")
    # safetensors stores keys sorted, so compare contents, not order
    assert set(parts["g_ema"]) == set(small_generator_sd())
    assert torch.equal(parts["g_ema"]["input.input"], small_generator_sd()["input.input"])
    assert set(parts["d"]) == set(small_discriminator_sd())
    assert parts["latent_avg"].shape == (512,)


# ----------------------------------------------------------------------------- refusals


class HostilePayload:
    """Unpickling this runs a shell command (here: creating a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_hostile_torch_file_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": HostilePayload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "untrusted pickle" in message and "system" in message
    assert "state_dict" in message and "safetensors" in message
    assert str(path) in message
    assert not marker.exists()


def test_hostile_raw_pickle_is_refused_but_would_run_when_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"payload": HostilePayload(marker)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="untrusted pickle"):
        load_state_dict_file(path)
    assert not marker.exists()
    # control: the payload is real (plain unpickling runs it), so the refusal above matters
    with open(path, "rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberate, creates the marker only
    assert marker.exists()


def test_corrupt_truncated_and_unsupported_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_state_dict_file(truncated)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_state_dict_file(tmp_path / "junk.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint type '.onnx'"):
        load_state_dict_file(tmp_path / "model.onnx")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_state_dict_file(tmp_path / "tensor.pt")
    with pytest.raises(MissingWeightsError, match="nope.pt"):
        load_state_dict_file(tmp_path / "nope.pt")


# ----------------------------------------------------------------------------- load_into


def test_load_into_copies_values_strictly():
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_into(target, source.state_dict(), source="mem", expected="conv+bn")
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), target.state_dict().values())
    )


def test_stylegan2_1024_into_256_names_keys_counts_and_size(manifests_dir):
    g256 = ManifestModule(manifests_dir / "stylegan2_rosinality_g_256.json")
    state = manifest_state(manifests_dir / "stylegan2_rosinality_g_1024.json")
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(g256, state, source="weights/ffhq-1024.pt", expected="StyleGAN2 generator 256 px")
    err, message = info.value, str(info.value)
    own, theirs = set(g256.state_dict()), set(state)
    assert len(err.unexpected) == len(theirs - own) > 0 and not err.missing
    assert "weights/ffhq-1024.pt" in message and "StyleGAN2 generator 256 px" in message
    assert f"unexpected keys ({len(theirs - own)} of {len(theirs)}" in message
    assert "convs.12.conv.weight" in message  # the first extra keys are named
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in err.unexpected} >= {
        "convs.12", "convs.15", "to_rgbs.6", "to_rgbs.7", "noises.noise_16",
    }  # fmt: skip
    assert err.mismatched == []  # the shared layers have the same shapes at both sizes
    assert any("1024 px" in h and "256 px" in h for h in err.hints)
    assert any("size=1024" in h for h in err.hints)


def test_discriminator_size_hint(manifests_dir):
    d256 = ManifestModule(manifests_dir / "stylegan2_rosinality_d_256.json")
    state = manifest_state(manifests_dir / "stylegan2_rosinality_d_1024.json")
    with pytest.raises(CheckpointMismatchError, match="discriminator \\(1024 px\\)"):
        load_into(d256, state, source="d.pt", expected="StyleGAN2 discriminator 256 px")


def test_halved_channels_hint_channel_multiplier():
    wide = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 3))
    narrow = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3))
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(wide, narrow.state_dict(), source="narrow.pt", expected="wide net")
    err = info.value
    assert [k for k, _, _ in err.mismatched] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert "0.weight: file [32, 3, 3, 3] vs model [64, 3, 3, 3]" in str(err)
    assert any("halved" in h and "channel_multiplier=1" in h for h in err.hints)
    with pytest.raises(CheckpointMismatchError, match="doubled"):
        load_into(narrow, wide.state_dict(), source="wide.pt", expected="narrow net")


def test_class_count_hint_for_bisenet():
    with torch.device("meta"):
        model, other = BiSeNet(n_classes=19), BiSeNet(n_classes=11)
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(model, other.state_dict(), source="parser.pth", expected="BiSeNet 19 classes")
    assert len(info.value.mismatched) == 3  # the three heads' classifiers
    assert any("11 in the file vs 19 in the model" in h for h in info.value.hints)


def test_wrong_family_hints(manifests_dir):
    with torch.device("meta"):
        v19, v16, parser = vgg19(), vgg16(), BiSeNet(19)
    with pytest.raises(CheckpointMismatchError, match="VGG16 \\(torchvision\\).*VGG19"):
        load_into(v19, v16.state_dict(), source="vgg16-397923af.pth", expected="torchvision vgg19")
    city = manifest_state(manifests_dir / "bisenetv2_19.json")
    with pytest.raises(CheckpointMismatchError, match="BiSeNetV2.*not a face parser"):
        load_into(parser, city, source="model_final_v2_city.pth", expected="face-parsing BiSeNet")


def test_prefix_hint_and_container_refusal():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    wrapped = {f"net.{k}": v for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="prefix='net.'"):
        load_into(net, wrapped, source="last.ckpt", expected="tiny net")
    with pytest.raises(CheckpointError, match="extract_state_dict"):
        load_into(net, {"state_dict": net.state_dict(), "epoch": 1}, source="x", expected="y")


# ----------------------------------------------------------------------------- weights table


def test_resolve_weight_found_and_missing(tmp_path):
    (tmp_path / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    assert (
        resolve_weight(tmp_path, "vgg19-dcbb9e9d.pth")
        == (tmp_path / "vgg19-dcbb9e9d.pth").resolve()
    )
    with pytest.raises(MissingWeightsError) as info:
        resolve_weight(tmp_path, "79999_iter.pth")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str((tmp_path / "79999_iter.pth").resolve()) in message
    assert "make weights" in message
    assert "154JgKpzCPW82qINcVieuPH3fZ2e0P812" in message  # where the file comes from
    assert "non-commercial" in message
    with pytest.raises(MissingWeightsError, match="download.pytorch.org/models/vgg16-397923af.pth"):
        resolve_weight(tmp_path, "vgg16-397923af.pth")
    with pytest.raises(MissingWeightsError, match="not one of the known public files"):
        resolve_weight(tmp_path, "mystery.pt")


def test_known_weights_table_is_consistent():
    for name, w in KNOWN_WEIGHTS.items():
        assert name == w.filename and w.licence and w.description and w.used_by
        assert w.url or "drive.google.com" in w.manual  # every file says where it comes from
        if w.check_kind == "sha256_prefix":  # torch.hub convention: <name>-<sha256[:8]>.pth
            assert Path(name).stem.rsplit("-", 1)[1] == w.check_value
        if w.check_kind == "git_blob_sha1":
            assert len(w.check_value) == 40 and int(w.check_value, 16) >= 0
    nc = {n for n, w in KNOWN_WEIGHTS.items() if w.non_commercial}
    assert {"stylegan2-ffhq-config-f.pt", "face_paint_512_v2.pt", "79999_iter.pth"} <= nc


def test_checksums_and_verification(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    # reference values: `sha256sum` and `git hash-object` of "hello\n"
    assert file_sha256(path) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"
    blob = KnownWeight("hello.txt", "d", "u", None, "m", "l", False, "git_blob_sha1",
                       "ce013625030ba8dba906f756967f9e9ca394464a")  # fmt: skip
    prefix = KnownWeight("hello.txt", "d", "u", None, "m", "l", False, "sha256_prefix", "5891b5b5")
    wrong = KnownWeight("hello.txt", "d", "u", None, "m", "l", False, "sha256_prefix", "deadbeef")
    unchecked = KnownWeight("hello.txt", "d", "u", None, "m", "l", False)
    assert verify_weight_file(path, blob) is True
    assert verify_weight_file(path, prefix) is True
    assert verify_weight_file(path, wrong) is False
    assert verify_weight_file(path, unchecked) is None


# ----------------------------------------------------------------------------- fetcher


@pytest.fixture(scope="module")
def fetcher(repo_root):
    spec = importlib.util.spec_from_file_location(
        "fetch_weights", repo_root / "scripts" / "fetch_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_fetcher_offline_fails_fast_with_instructions(fetcher, tmp_path, monkeypatch, capsys):
    calls = []

    def no_network(request, timeout):
        calls.append((request.full_url, timeout))
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(fetcher, "urlopen", no_network)
    status = fetcher.main([f"paths.weights_dir={tmp_path}", "timeout=3"])
    out = capsys.readouterr().out
    assert status == 2
    assert len(calls) == 1 and calls[0][1] == 3.0  # one probe, short timeout
    assert "No internet" in out and "Nothing was downloaded" in out
    for name in ("vgg19-dcbb9e9d.pth", "face_paint_512_v2.pt", "stylegan2-ffhq-config-f.pt"):
        assert str((tmp_path / name).resolve()) in out
    assert KNOWN_WEIGHTS["79999_iter.pth"].manual in out
    assert "NON-COMMERCIAL" in out
    assert list(tmp_path.iterdir()) == []


def test_fetcher_downloads_atomically_and_verifies(fetcher, tmp_path, capsys):
    source = tmp_path / "src.bin"
    source.write_bytes(b"hello\n")
    url = source.as_uri()  # a local file: no network involved
    good = KnownWeight("good.bin", "d", "u", url, "m", "MIT", False, "git_blob_sha1",
                       "ce013625030ba8dba906f756967f9e9ca394464a")  # fmt: skip
    bad = KnownWeight("bad.bin", "d", "u", url, "m", "MIT", False, "sha256_prefix", "deadbeef")
    dest = tmp_path / "weights"
    opts = fetcher.Options(weights_dir=dest)
    assert fetcher.fetch(opts, [good, bad]) == 1
    out = capsys.readouterr().out
    assert (dest / "good.bin").read_bytes() == b"hello\n"
    assert not (dest / "bad.bin").exists()
    assert "fails its sha256_prefix check" in out
    assert sorted(p.name for p in dest.iterdir()) == ["good.bin"]  # no partial files left
    # a second run finds the verified file and downloads nothing
    assert fetcher.fetch(opts, [good]) == 0
    assert "ok" in capsys.readouterr().out


def test_fetcher_arguments(fetcher, tmp_path):
    opts = fetcher.parse_args([f"paths.weights_dir={tmp_path}", "only=vgg16-397923af.pth"])
    assert opts.weights_dir == tmp_path
    assert [w.filename for w in fetcher.select(opts)] == ["vgg16-397923af.pth"]
    default = {w.filename for w in fetcher.select(fetcher.parse_args([]))}
    # optional files, which no config reads, are fetched only by name or with all=true
    assert "model_final_v2_city.pth" not in default and "vgg16-397923af.pth" not in default
    assert {"vgg19-dcbb9e9d.pth", "face_paint_512_v2.pt"} <= default
    everything = {w.filename for w in fetcher.select(fetcher.parse_args(["all=true"]))}
    assert {"model_final_v2_city.pth", "vgg16-397923af.pth"} <= everything
    with pytest.raises(SystemExit, match="unknown file"):
        fetcher.parse_args(["only=nope.pt"])


def test_random_bytes_are_a_clear_checkpoint_error(tmp_path):
    """Any garbage file (random bytes break the unpickler in many ways) is one CheckpointError."""
    import random

    from portrait_toon.checkpoints import CheckpointError, load_state_dict_file

    rng = random.Random(0)
    for i in range(200):
        path = tmp_path / f"garbage_{i}.pt"
        path.write_bytes(bytes(rng.getrandbits(8) for _ in range(256)))
        with pytest.raises(CheckpointError, match=path.name):
            load_state_dict_file(path)
