"""Safe image I/O: odd files in, atomic no-clobber writes out, exact tensor conversions."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from portrait_toon.data.images import (
    ImageReadError,
    apply_exif_orientation,
    list_images,
    read_image,
    to_tensor,
    to_uint8,
    write_image,
)
from portrait_toon.utils.files import atomic_write_bytes

LOGGER = "portrait_toon.data.images"


def random_rgb(height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def notes_about(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and str(path) in r.message]


# ------------------------------------------------------------------------------ read_image


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    rgb = random_rgb()
    path = write_image(tmp_path / "a.png", rgb)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grey = random_rgb()[..., 0]
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = read_image(path)
    assert out.shape == (24, 40, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)
    assert any("grayscale" in note for note in notes_about(caplog, path))


def test_rgba_is_composited_over_white(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[:, :8, 3] = 0  # left half fully transparent (its colour must not show)
    rgba[:, 8:12, 3] = 128  # half transparent
    rgba[:, 12:, 3] = 255  # opaque
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = read_image(path)
    assert (out[:, :8] == 255).all()
    alpha = 128 / 255
    expected_half = np.rint([200 * alpha + 255 * (1 - alpha), 255 * (1 - alpha)]).astype(int)
    assert out[0, 9, 0] == expected_half[0] and out[0, 9, 1] == expected_half[1]
    np.testing.assert_array_equal(out[:, 12:], np.broadcast_to([200, 0, 0], (16, 4, 3)))
    assert any("alpha" in note for note in notes_about(caplog, path))


def test_alpha_background_is_configurable(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert (read_image(path, alpha_background=(0, 10, 20)) == [0, 10, 20]).all()


def sixteen_bit_values(shape: tuple[int, ...]) -> np.ndarray:
    values = np.random.default_rng(3).integers(0, 65536, shape).astype(np.uint16)
    # Values where "keep the high byte" and round(v/257) disagree, plus both ends of the range.
    values.flat[:4] = [41743, 1000, 0, 65535]
    return values


def test_16bit_grayscale_png_is_scaled_not_clipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = sixteen_bit_values((12, 20))
    path = tmp_path / "depth16.png"
    assert cv2.imwrite(str(path), values)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = read_image(path)
    expected = np.rint(values / 257).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)
    assert any("16-bit" in note for note in notes_about(caplog, path))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_is_scaled_by_257(tmp_path: Path, suffix: str) -> None:
    bgr = sixteen_bit_values((12, 20, 3))
    path = tmp_path / f"colour16{suffix}"
    assert cv2.imwrite(str(path), bgr)
    out = read_image(path)
    expected = np.rint(bgr[..., ::-1] / 257).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_16bit_rgba_is_scaled_and_composited(tmp_path: Path) -> None:
    bgra = np.zeros((10, 10, 4), dtype=np.uint16)
    bgra[..., 2] = 41743  # red channel
    bgra[:, :5, 3] = 65535
    path = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path), bgra)
    out = read_image(path)
    np.testing.assert_array_equal(out[:, :5], np.broadcast_to([162, 0, 0], (10, 5, 3)))
    assert (out[:, 5:] == 255).all()


def test_palette_gif_and_transparent_palette(tmp_path: Path) -> None:
    rgb = random_rgb()
    palette_image = Image.fromarray(rgb).convert("P")
    path = tmp_path / "palette.gif"
    palette_image.save(path)
    out = read_image(path)
    np.testing.assert_array_equal(out, np.asarray(palette_image.convert("RGB")))

    indices = np.zeros((8, 8), dtype=np.uint8)
    indices[:, 4:] = 1
    transparent = Image.fromarray(indices, mode="P")
    transparent.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    path = tmp_path / "transparent.png"
    transparent.save(path, transparency=0)
    out = read_image(path)
    assert (out[:, :4] == 255).all()  # index 0 is transparent: white, not black
    assert (out[:, 4:] == [10, 200, 30]).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "print.jpg"
    Image.fromarray(random_rgb()).convert("CMYK").save(path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = read_image(path)
    with Image.open(path) as reference:
        assert reference.mode == "CMYK"
        np.testing.assert_array_equal(out, np.asarray(reference.convert("RGB")))
    assert any("CMYK" in note for note in notes_about(caplog, path))


def test_exif_rotated_jpeg_is_upright(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Stored landscape 40 wide x 20 high, with a red block in the stored top-left corner.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:10, :10] = [255, 0, 0]
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = read_image(path)
    assert out.shape == (40, 20, 3)  # portrait once upright
    # Rotating clockwise moves the stored top-left corner to the top-right.
    assert out[:8, -8:, 0].mean() > 200 and out[:8, -8:, 1].mean() < 50
    assert out[-8:, :8, 0].mean() < 50
    assert any("EXIF orientation 6" in note for note in notes_about(caplog, path))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(orientation: int) -> None:
    array = random_rgb(6, 9, seed=orientation)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(apply_exif_orientation(array, orientation), expected)


def test_truncated_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    Image.fromarray(random_rgb(64, 64)).save(whole)
    data = whole.read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="broken.jpg.*(damaged|truncated)") as info:
        read_image(broken)
    assert info.value.path == broken


def test_text_file_named_png_raises(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png.*not an image"):
        read_image(fake)


def test_missing_file_and_folder_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="missing.png.*no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_tiny_image_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 7, dtype=np.uint8)).save(path)
    with pytest.raises(ImageReadError, match="dot.png.*1x1 px is too small"):
        read_image(path)
    assert read_image(path, min_side=1).tolist() == [[[7, 7, 7]]]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): what a bomb looks like to
    a reader that only parsed the header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 100_000])  # between 1x-2x the limit, and far beyond
def test_decompression_bomb_header_is_refused(tmp_path: Path, side: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(ImageReadError, match="bomb.png.*max_pixels"):
        read_image(path)  # refused from the header alone: no 30 GB allocation


def test_pixel_limit_is_configurable_and_restored(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", random_rgb(32, 32))
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match="32x32 = 1,024 pixels is above max_pixels=100"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=1024).shape == (32, 32, 3)
    assert before == Image.MAX_IMAGE_PIXELS  # the global limit is only swapped during a read


def test_image_read_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(ImageReadError("x/y.png", "broken")))
    assert isinstance(error, ImageReadError)
    assert error.path == Path("x/y.png") and error.reason == "broken"


# ----------------------------------------------------------------------------- write_image


def test_write_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "out.png"
    first, second = random_rgb(seed=1), random_rgb(seed=2)
    write_image(path, first)  # creates the parent folders
    with pytest.raises(FileExistsError, match=r"out\.png.*overwrite=true"):
        write_image(path, second)
    np.testing.assert_array_equal(read_image(path), first)
    write_image(path, second, overwrite=True)
    np.testing.assert_array_equal(read_image(path), second)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp files left


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    """Atomic writes go through a 0600 temp file; the output gets 0666 less the umask."""
    previous = os.umask(0o022)
    try:
        image_path = write_image(tmp_path / "out.png", random_rgb())
        bytes_path = atomic_write_bytes(tmp_path / "out.bin", b"data")
    finally:
        os.umask(previous)
    assert image_path.stat().st_mode & 0o777 == 0o644
    assert bytes_path.stat().st_mode & 0o777 == 0o644


@pytest.fixture
def umask_0027(monkeypatch: pytest.MonkeyPatch):
    """umask 027 for the test, and every os.umask call made meanwhile (os.umask sets the mask
    for the whole process: reading it that way races with other threads creating files)."""
    from portrait_toon.utils import files

    real_umask, calls = os.umask, []

    def spy(mask: int) -> int:
        calls.append(mask)
        return real_umask(mask)

    previous = real_umask(0o027)
    files._umask_by_setting_it.cache_clear()
    monkeypatch.setattr(os, "umask", spy)
    yield calls
    monkeypatch.undo()
    real_umask(previous)
    files._umask_by_setting_it.cache_clear()  # its 027 must not outlive the test


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_the_umask_is_read_without_setting_it(tmp_path: Path, umask_0027: list[int]) -> None:
    for index in range(2):
        path = atomic_write_bytes(tmp_path / f"out{index}.bin", b"data")
        assert path.stat().st_mode & 0o777 == 0o640
    assert umask_0027 == []  # read from /proc: the process's umask never changed


def test_without_proc_the_umask_is_set_and_reset_once(
    tmp_path: Path, umask_0027: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from portrait_toon.utils import files

    monkeypatch.setattr(files, "PROC_STATUS", tmp_path / "no_proc_status")
    for index in range(3):
        path = atomic_write_bytes(tmp_path / f"out{index}.bin", b"data")
        assert path.stat().st_mode & 0o777 == 0o640
    assert umask_0027 == [0, 0o027]  # once for the process, not once per file


@pytest.mark.parametrize(
    ("suffix", "magic"),
    [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8"), (".JPEG", b"\xff\xd8"), (".webp", b"RIFF")],
)
def test_write_format_follows_suffix(tmp_path: Path, suffix: str, magic: bytes) -> None:
    path = write_image(tmp_path / f"out{suffix}", random_rgb())
    assert path.read_bytes().startswith(magic)
    assert read_image(path).shape == (24, 40, 3)


def test_write_is_atomic_when_encoding_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.png"
    write_image(path, random_rgb(seed=1))
    original = path.read_bytes()

    def failing_save(self: Image.Image, stream, format=None, **kwargs) -> None:  # noqa: A002
        stream.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, random_rgb(seed=2), overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "new.png", random_rgb(seed=2))
    assert path.read_bytes() == original  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no partial/temp files


def test_write_rejects_bad_suffix_and_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported suffix '.txt'"):
        write_image(tmp_path / "out.txt", random_rgb())
    with pytest.raises(TypeError, match="uint8"):
        write_image(tmp_path / "out.png", random_rgb().astype(np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        write_image(tmp_path / "out.png", np.zeros((4, 4, 5), dtype=np.uint8))


# ------------------------------------------------------------------------ tensor conversions


def test_tensor_round_trip_is_exact_for_every_value() -> None:
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    tensor = to_tensor(every_value)
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == torch.float32
    assert tensor.min() == -1.0 and tensor.max() == 1.0
    np.testing.assert_array_equal(to_uint8(tensor), every_value)
    np.testing.assert_array_equal(to_uint8(tensor[0]), every_value)  # [3, H, W] too


def test_to_uint8_rounds_and_clamps() -> None:
    values = torch.tensor([-3.0, -1.0, 0.0, 0.004, 0.0039, 1.0, 7.0]).view(1, 1, 1, 7)
    out = to_uint8(values.expand(1, 3, 1, 7))
    # 0.004 -> 128.01 -> 128; 0.0039 -> 127.997 -> 128; -0.0 -> 127.5 -> 128 (round half even
    # is torch's rule, 127.5 -> 128)
    assert out[0, :, 0].tolist() == [0, 0, 128, 128, 128, 255, 255]
    with pytest.raises(ValueError, match="batch of 2"):
        to_uint8(torch.zeros(2, 3, 4, 4))


def test_channel_order_is_rgb() -> None:
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    tensor = to_tensor(red)
    assert tensor[0, 0].eq(1).all() and tensor[0, 1:].eq(-1).all()


# ----------------------------------------------------------------------------- list_images


def test_list_images_sorted_case_insensitive_recursive(tmp_path: Path) -> None:
    for name in [
        "b.PNG",
        "a.jpg",
        "sub/c.JpEg",
        "sub/deeper/d.webp",
        "notes.txt",
        ".hidden.png",
        ".cache/e.png",
        "sub/._f.jpg",
    ]:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a folder with an image suffix is not an image
    flat = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert flat == ["a.jpg", "b.PNG"]
    deep = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert deep == ["a.jpg", "b.PNG", "sub/c.JpEg", "sub/deeper/d.webp"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "a.jpg")


def test_non_srgb_colour_profile_gets_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import ImageCms

    image = Image.fromarray(random_rgb())
    for name in ("sRGB", "XYZ"):
        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile(name))
        image.save(tmp_path / f"{name}.png", icc_profile=profile.tobytes())
    with caplog.at_level(logging.INFO, logger=LOGGER):
        read_image(tmp_path / "sRGB.png")
        read_image(tmp_path / "XYZ.png")
    assert not notes_about(caplog, tmp_path / "sRGB.png")
    assert any("not applied" in note for note in notes_about(caplog, tmp_path / "XYZ.png"))
