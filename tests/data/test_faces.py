"""Few-shot face sets for G_t: folder reading (odd formats), centre/box crops, box files, the
repeating loader, and the embedded world's character close-ups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_toon.data.faces import (
    FaceDataset,
    FaceFolderDataModule,
    embedded_character_faces,
    load_face_folder,
    read_box_file,
    square_box,
)

GREEN = (0, 200, 0)


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def _green_square_image() -> np.ndarray:
    """100x120 black image with a green 30x30 square at x=10, y=20 (the 'face')."""
    image = np.zeros((100, 120, 3), np.uint8)
    image[20:50, 10:40] = GREEN
    return image


def test_folder_of_odd_images_reads_as_rgb_squares(tmp_path: Path) -> None:
    grey = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))  # 40x48, L mode
    _save(tmp_path / "a_grey.png", grey, mode="L")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half fully transparent
    _save(tmp_path / "b_rgba.png", rgba, mode="RGBA")
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20] = (0, 0, 255)
    wide[:, 60:] = (0, 0, 255)
    wide[:, 20:60] = (255, 0, 0)  # the centred 40x40 square is red
    Image.fromarray(wide).save(tmp_path / "c_wide.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")

    faces, names = load_face_folder(tmp_path, size=16)
    assert names == ["a_grey.png", "b_rgba.png", "c_wide.jpg"]
    assert faces.shape == (3, 3, 16, 16) and faces.dtype == torch.uint8
    # grey -> three equal channels
    assert torch.equal(faces[0, 0], faces[0, 1]) and torch.equal(faces[0, 1], faces[0, 2])
    # RGBA: transparent half composited over white, opaque half red
    assert (faces[1, :, 12:, :] == 255).all()
    assert (faces[1, 0, :4] == 255).all() and (faces[1, 1:, :4] == 0).all()
    # centre crop keeps the red middle, none of the blue sides
    red = faces[2].float()
    assert red[0].min() > 200 and red[2].max() < 60


def test_box_file_crops_the_box_in_csv_and_every_json_layout(tmp_path: Path) -> None:
    _save(tmp_path / "face.png", _green_square_image())
    _save(tmp_path / "ignored.png", np.full((50, 50, 3), 255, np.uint8))
    layouts = {
        "boxes.csv": "filename,x,y,w,h,comment\nface.png,10,20,30,30,a face\n",
        "list.json": json.dumps([{"filename": "face.png", "x": 10, "y": 20, "w": 30, "h": 30}]),
        "lists.json": json.dumps({"face.png": [10, 20, 30, 30]}),
        "dicts.json": json.dumps({"face.png": {"x": 10, "y": 20, "w": 30, "h": 30}}),
    }
    for name, text in layouts.items():
        (tmp_path / name).write_text(text)
        faces, names = load_face_folder(tmp_path, size=8, box_file=tmp_path / name)
        assert names == ["face.png"], name  # the box file decides the set
        expected = torch.tensor(GREEN, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
        assert torch.equal(faces[0], expected), name
    # a relative box-file name is also found inside the image folder
    faces, _ = load_face_folder(tmp_path, size=8, box_file="lists.json")
    assert faces.shape == (1, 3, 8, 8)
    # a margin (box_scale 2) shows black around the green square
    with_margin, _ = load_face_folder(tmp_path, size=8, box_file="lists.json", box_scale=2.0)
    assert with_margin[0, 1, 0, 0] == 0 and with_margin[0, 1, 4, 4] == GREEN[1]


def test_non_square_and_border_boxes_give_full_squares(tmp_path: Path) -> None:
    assert square_box((10, 20, 30, 10)) == (10, 10, 30)  # centred square, side max(w, h)
    image = _green_square_image()
    _save(tmp_path / "face.png", image)
    (tmp_path / "boxes.json").write_text(json.dumps({"face.png": [-20, -10, 60, 40]}))
    # square of side 60 centred on (10, 10): left = top = -20, i.e. 20 px outside the image
    faces, _ = load_face_folder(tmp_path, size=60, box_file=tmp_path / "boxes.json")
    assert faces.shape == (1, 3, 60, 60)
    # the outside part is filled by reflection (without repeating the edge pixel)
    expected = np.pad(image, ((20, 0), (20, 0), (0, 0)), mode="reflect")[:60, :60]
    assert torch.equal(faces[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_box_file_errors_name_the_problem(tmp_path: Path) -> None:
    _save(tmp_path / "face.png", _green_square_image())
    (tmp_path / "bad_header.csv").write_text("name,x,y,w,h\nface.png,1,2,3,4\n")
    with pytest.raises(ValueError, match="filename"):
        read_box_file(tmp_path / "bad_header.csv")
    (tmp_path / "missing.json").write_text(json.dumps({"nope.png": [0, 0, 10, 10]}))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_face_folder(tmp_path, size=8, box_file=tmp_path / "missing.json")
    (tmp_path / "negative.json").write_text(json.dumps({"face.png": [0, 0, -1, 10]}))
    with pytest.raises(ValueError, match="non-positive"):
        read_box_file(tmp_path / "negative.json")
    with pytest.raises(ValueError, match=".csv or .json"):
        read_box_file(tmp_path / "face.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no face images"):
        load_face_folder(empty, size=8)


def test_tiny_sets_are_repeated_into_full_batches_and_mirrored(tmp_path: Path) -> None:
    for i in range(3):
        image = np.zeros((24, 24, 3), np.uint8)
        image[:, : 8 * (i + 1)] = 255  # asymmetric, so a mirror is visible
        _save(tmp_path / f"{i}.png", image)
    data = FaceFolderDataModule(image_dir=str(tmp_path), size=8, batch_size=4, samples_per_epoch=20)
    data.setup("fit")
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == 5  # 20 items of 3 faces, full batches of 4
    images = torch.cat([b["image"] for b in batches])
    assert images.shape == (20, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert sorted(set(torch.cat([b["index"] for b in batches]).tolist())) == [0, 1, 2]

    dataset = FaceDataset(data.faces, length=200, hflip=True)
    face = data.faces[0].float() / 127.5 - 1
    torch.manual_seed(0)
    seen = [dataset[3 * k]["image"] for k in range(40)]  # item 3k is face 0
    assert any(torch.equal(s, face) for s in seen)
    assert any(torch.equal(s, face.flip(-1)) for s in seen)
    assert all(torch.equal(s, face) or torch.equal(s, face.flip(-1)) for s in seen)


def test_embedded_world_gives_distinct_seeded_character_close_ups() -> None:
    faces = embedded_character_faces(6, 32, seed=3)
    assert faces.shape == (6, 3, 32, 32) and faces.dtype == torch.uint8
    # a pure function of the seeds: the first two of the same seeds again, alone
    assert torch.equal(faces[:2], embedded_character_faces(2, 32, seed=3))
    assert not torch.equal(faces[0], faces[1])
    # a close-up around the head: the centre is mostly the character's fixed light skin
    skin = torch.tensor([255.0, 224.0, 206.0]).view(1, 3, 1, 1)
    is_skin = ((faces.float() - skin).abs().amax(1) < 40).float()
    centre = is_skin[:, 8:24, 8:24].mean((1, 2))
    assert (centre > 0.2).all(), centre
    # far more skin in the centre than overall (hair, clothes and background around it)
    assert (centre > 1.4 * is_skin.mean((1, 2))).all()


def test_datamodule_without_folder_uses_the_embedded_world() -> None:
    data = FaceFolderDataModule(image_dir=None, size=32, batch_size=2, num_embedded=4)
    assert FaceFolderDataModule.needs_synthesizer is False
    faces = data.load_faces()
    assert faces.shape == (4, 3, 32, 32) and data.names[0] == "embedded_000"
    with pytest.raises(ValueError, match="power of two"):
        FaceFolderDataModule(size=48)
    with pytest.raises(ValueError, match="image_dir"):
        FaceFolderDataModule(image_dir=None, box_file="boxes.csv")
