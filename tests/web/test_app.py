"""The web page in a real browser: the app serves a tiny random stylizer on a free local port,
headless Chromium (Debian's `chromium`, driven by Playwright; no browser download) uploads a
photo and a non-image, and `gradio_client` calls the `stylize` endpoint.

Without a browser the browser test skips with the reason, unless PORTRAIT_TOON_REQUIRE_BROWSER
is set (CI sets it in .ci/run, which installs Chromium): then it fails.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_toon.config import ConfigError, compose_config
from portrait_toon.nets.unet import UNet
from portrait_toon.utils.generator_file import save_stylizer

TINY_UNET = {"base_channels": 8, "depth": 2, "channel_mult": [1, 2], "bottleneck_blocks": 1}
# every wait in the browser is bounded by this (ms); the whole test takes a few seconds
WAIT_MS = 30_000


def browser_path() -> str | None:
    """The Chromium executable Playwright should drive, or None."""
    configured = os.environ.get("PORTRAIT_TOON_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[app]' or make install)"
    if browser_path() is None:
        return (
            "no Chromium found (apt-get install -y chromium, or set PORTRAIT_TOON_CHROMIUM to a "
            "Chromium executable)"
        )
    return None


def require_browser() -> str:
    reason = browser_skip_reason()
    if reason is not None:
        if os.environ.get("PORTRAIT_TOON_REQUIRE_BROWSER"):
            pytest.fail(f"PORTRAIT_TOON_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    return str(browser_path())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Colour gradients plus noise: content the random net visibly changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=2) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def tiny_stylizer(run_dir: Path) -> Path:
    """A random-init U-Net (weights perturbed, so it is far from the identity it starts as)
    saved as a train run would: stylizer.pt beside the run's metrics.json."""
    torch.manual_seed(0)
    net = UNet(**TINY_UNET)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = save_stylizer(run_dir / "stylizer.pt", net.eval(), meta={"global_step": 7})
    metrics = {"l1_output_target": 0.05, "l1_input_target": 0.1, "steps": 7}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return path


def app_config(tmp: Path, *overrides: str):
    return compose_config("app", list(overrides), output_dir=tmp / "app_run")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The app on a free local port, in this process; always shut down."""
    from portrait_toon.tasks.app import start

    tmp = tmp_path_factory.mktemp("web")
    ckpt = tiny_stylizer(tmp / "run")
    cfg = app_config(
        tmp,
        f"ckpt={ckpt}",
        f"port={free_port()}",
        "device=cpu",
        "examples.builtin=[astronaut]",
        "examples.world_frames=1",
        "max_pixels=1000000",
    )
    app = start(cfg)
    try:
        yield app
    finally:
        app.close()


# ------------------------------------------------------------------------------ in the browser


def test_page_in_browser(served, tmp_path: Path) -> None:
    """Upload a photo: the result is shown, at the photo's size, and differs from it. Upload a
    non-image: the page says so and the server keeps serving (an example still runs)."""
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    source = photo(120, 200)
    photo_path = tmp_path / "photo.png"
    Image.fromarray(source).save(photo_path)
    text_path = tmp_path / "notes.png"  # a text file with an image's name
    text_path.write_text("this is not an image\n")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(served.url, timeout=WAIT_MS)
            assert "Loaded model" in page.inner_text("#model-summary")
            assert "0.0500 vs 0.1000" in page.inner_text("#model-summary")

            page.set_input_files("#input-image input[type=file]", str(photo_path))
            output = page.wait_for_selector("#output-image img", state="visible")
            page.wait_for_function(
                "() => { const i = document.querySelector('#output-image img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=WAIT_MS,
            )
            size = output.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [200, 120]
            shown = _fetch_image(page, output.get_attribute("src"))
            assert shown.shape == source.shape
            assert np.abs(shown.astype(float) - source).mean() > 2.0
            first_src = output.get_attribute("src")
            download = page.locator("#output-image a[download]").first
            assert download.get_attribute("download") == "photo_toon.png"

            page.set_input_files("#input-image input[type=file]", str(text_path))
            message = page.get_by_text("Cannot read 'notes.png'", exact=False)
            message.first.wait_for(state="visible", timeout=WAIT_MS)
            assert "not an image" in message.first.inner_text()

            # still serving: the held-out world frame example runs and replaces the result
            page.locator("img[src*='world_0']").first.click()
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#output-image img');"
                " return i && i.src !== old && i.complete && i.naturalWidth === 128; }",
                arg=first_src,
                timeout=WAIT_MS,
            )
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()


def _fetch_image(page, src: str) -> np.ndarray:
    response = page.request.get(src, timeout=WAIT_MS)
    assert response.ok, f"{src}: HTTP {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


# ------------------------------------------------------------------------------ the API


def test_stylize_endpoint_with_gradio_client(served, tmp_path: Path) -> None:
    """`stylize` takes one image and returns one image at its size, as gradio_client sees it."""
    from gradio_client import Client, handle_file

    client = Client(served.url, verbose=False)
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert len(endpoint["/stylize"]["parameters"]) == 1
    assert len(endpoint["/stylize"]["returns"]) == 1

    source = photo(72, 56, seed=1)
    path = tmp_path / "client.png"
    Image.fromarray(source).save(path)
    result = np.asarray(Image.open(client.predict(handle_file(str(path)), api_name="/stylize")))
    assert result.shape == source.shape
    expected = served.stylizer(source)
    assert np.abs(result.astype(int) - expected).max() <= 1  # PNG round trip: lossless


def _truncated_png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _too_many_pixels(path: Path) -> None:  # the served app allows 1,000,000
    Image.new("RGB", (1001, 1000)).save(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [(_truncated_png, "damaged or truncated"), (_too_many_pixels, "above max_pixels")],
)
def test_stylize_endpoint_rejects_bad_files_and_keeps_serving(
    served, tmp_path: Path, make, message: str
) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "bad.png"
    make(bad)
    client = Client(served.url, verbose=False)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(bad)), api_name="/stylize")
    good = tmp_path / "good.png"
    Image.fromarray(photo(16, 24)).save(good)
    assert Image.open(client.predict(handle_file(str(good)), api_name="/stylize")).size == (24, 16)


def test_requests_run_one_at_a_time(served, tmp_path: Path, monkeypatch) -> None:
    """Three requests at once: the queue runs them one after another (never two images in
    memory together), and every one gets its answer."""
    import threading

    from gradio_client import Client, handle_file

    lock = threading.Lock()
    active, most = [0], [0]
    run = served.stylizer._array

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.3)  # long enough for the other requests to arrive meanwhile
            return run(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(served.stylizer, "_array", counted)
    path = tmp_path / "p.png"
    Image.fromarray(photo(32, 40)).save(path)
    client = Client(served.url, verbose=False)
    jobs = [client.submit(handle_file(str(path)), api_name="/stylize") for _ in range(3)]
    sizes = [Image.open(job.result(timeout=WAIT_MS / 1000)).size for job in jobs]
    assert sizes == [(40, 32)] * 3
    assert most[0] == 1


# ------------------------------------------------------------------------------ no model yet


def test_no_trained_stylizer_names_where_it_looked(tmp_path: Path) -> None:
    from portrait_toon.tasks.app import default_checkpoint

    cfg = app_config(tmp_path, f"paths.log_dir={tmp_path / 'logs'}")
    with pytest.raises(ConfigError, match=r"no trained stylizer under .*logs.*make demo"):
        default_checkpoint(cfg)
    older = tiny_stylizer(tmp_path / "logs" / "demo" / "runs" / "a")
    newer = tiny_stylizer(tmp_path / "logs" / "demo" / "runs" / "b")
    os.utime(older, (time.time() + 60, time.time() + 60))
    assert default_checkpoint(cfg) == str(older)
    os.utime(newer, (time.time() + 120, time.time() + 120))
    assert default_checkpoint(cfg) == str(newer)


# ------------------------------------------------------------------------------ page options


def test_size_and_tile_options(tmp_path: Path) -> None:
    """ "size" scales the longest side down first; a fixed tile gives the one-pass result up to
    the seams' blend; a bad choice is a message, not a crash."""
    import gradio as gr

    from portrait_toon import Stylizer
    from portrait_toon.web.handler import StylizeHandler

    stylizer = Stylizer.load(tiny_stylizer(tmp_path / "run"), device="cpu")
    notes: list[str] = []
    handler = StylizeHandler(stylizer, results_dir=tmp_path / "results", notify=notes.append)
    path = tmp_path / "wide.png"
    Image.fromarray(photo(150, 600)).save(path)

    small = handler(str(path), {"tile": "auto", "size": "512"})
    assert Path(small).name == "wide_toon.png"
    assert Image.open(small).size == (512, 128)
    whole = np.asarray(Image.open(handler(str(path), {"tile": "one pass", "size": "original"})))
    tiled = np.asarray(Image.open(handler(str(path), {"tile": "512", "size": "original"})))
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["wide_toon.png"]
    assert whole.shape == tiled.shape == (150, 600, 3)
    assert np.abs(whole.astype(int) - tiled).mean() < 2.0
    assert "one pass" in notes[1] and "tiles of 512 px" in notes[2]
    with pytest.raises(gr.Error, match="tile='7x'"):
        handler(str(path), {"tile": "7x"})
    with pytest.raises(gr.Error, match="No image"):
        handler(None)
