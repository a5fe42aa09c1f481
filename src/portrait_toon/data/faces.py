"""Few-shot face sets for fine-tuning the target StyleGAN2 (G_t): a folder of cartoon faces, or
the embedded world's character close-ups when no folder is given.

Faces are cropped square (centre crop, or a box from a CSV/JSON box file), resized to the
generator's size once, and kept in memory: the method uses fewer than 100 of them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from portrait_toon.data.images import list_images, read_image

log = logging.getLogger(__name__)

#: The method's few-shot regime; more faces work, but are logged as outside it.
FEW_SHOT_LIMIT = 100

Box = tuple[float, float, float, float]  # x, y, w, h in pixels of the upright image


# ---------------------------------------------------------------------------------------------
# cropping


def square_box(box: Box, scale: float = 1.0) -> tuple[int, int, int]:
    """The square (left, top, side) centred on `box`, side = max(w, h) * scale (rounded)."""
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * scale)))
    center_x, center_y = x + w / 2.0, y + h / 2.0
    return (
        int(math.floor(center_x - side / 2.0 + 0.5)),
        int(math.floor(center_y - side / 2.0 + 0.5)),
        side,
    )


def crop_square(image: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """Crop [top:top+side, left:left+side]; parts outside the image are filled by reflection
    (as FFHQ's alignment does), so a box near the border still gives a full square."""
    height, width = image.shape[:2]
    pad_top, pad_left = max(0, -top), max(0, -left)
    pad_bottom, pad_right = max(0, top + side - height), max(0, left + side - width)
    if pad_top or pad_left or pad_bottom or pad_right:
        # cv2's reflection needs the pad smaller than the image; replicate covers the rest
        mode = (
            cv2.BORDER_REFLECT_101
            if max(pad_top, pad_bottom) < height and max(pad_left, pad_right) < width
            else cv2.BORDER_REPLICATE
        )
        image = cv2.copyMakeBorder(image, pad_top, pad_bottom, pad_left, pad_right, mode)
        top, left = top + pad_top, left + pad_left
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an [H, W, 3] image."""
    height, width = image.shape[:2]
    side = min(height, width)
    return crop_square(image, (width - side) // 2, (height - side) // 2, side)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square uint8 image to `size` (area filter down, Lanczos up: no aliasing)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LANCZOS4
    return cv2.resize(image, (size, size), interpolation=interpolation)


# ---------------------------------------------------------------------------------------------
# box files


def read_box_file(path: str | Path) -> dict[str, Box]:
    """Face boxes by file name: `{relative/path.png: (x, y, w, h)}` in pixels of the upright image.

    CSV: a header with columns `filename, x, y, w, h` (extra columns ignored).
    JSON: `{"a.png": [x, y, w, h]}`, `{"a.png": {"x":.., "y":.., "w":.., "h":..}}` or a list of
    `{"filename": "a.png", "x":.., "y":.., "w":.., "h":..}`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        boxes = _read_box_csv(path)
    elif suffix == ".json":
        boxes = _read_box_json(path)
    else:
        raise ValueError(f"box file '{path}': use a .csv or .json file (got '{suffix}')")
    if not boxes:
        raise ValueError(f"box file '{path}' lists no boxes")
    return boxes


def _box_from_values(path: Path, name: str, values: Any) -> Box:
    try:
        x, y, w, h = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"box file '{path}': entry '{name}' must be four numbers x, y, w, h; got {values!r}"
        ) from None
    if w <= 0 or h <= 0:
        raise ValueError(f"box file '{path}': entry '{name}' has a non-positive size w={w}, h={h}")
    return x, y, w, h


def _read_box_csv(path: Path) -> dict[str, Box]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        needed = ("filename", "x", "y", "w", "h")
        absent = [c for c in needed if c not in columns]
        if absent:
            raise ValueError(
                f"box file '{path}': the CSV header must name columns {', '.join(needed)}; "
                f"missing {absent} (header: {reader.fieldnames})"
            )
        boxes = {}
        for row in reader:
            name = (row[columns["filename"]] or "").strip()
            if not name:
                continue
            boxes[name] = _box_from_values(path, name, [row[columns[c]] for c in needed[1:]])
    return boxes


def _read_box_json(path: Path) -> dict[str, Box]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"box file '{path}' is not valid JSON: {error}") from None
    if isinstance(data, list):
        entries = {}
        for i, item in enumerate(data):
            if not isinstance(item, Mapping) or "filename" not in item:
                raise ValueError(f"box file '{path}': list entry {i} needs a 'filename' key")
            entries[str(item["filename"])] = item
    elif isinstance(data, Mapping):
        entries = dict(data)
    else:
        raise ValueError(f"box file '{path}': expected a JSON object or list, got {type(data)}")
    boxes = {}
    for name, value in entries.items():
        if isinstance(value, Mapping):
            missing = [k for k in "xywh" if k not in value]
            if missing:
                raise ValueError(f"box file '{path}': entry '{name}' lacks keys {missing}")
            value = [value[k] for k in "xywh"]
        boxes[name] = _box_from_values(path, name, value)
    return boxes


# ---------------------------------------------------------------------------------------------
# loading face sets


def load_face_folder(
    image_dir: str | Path,
    size: int,
    box_file: str | Path | None = None,
    box_scale: float = 1.0,
    recursive: bool = False,
) -> tuple[Tensor, list[str]]:
    """All faces of a folder as uint8 [N, 3, size, size] and their relative names.

    Without a box file each image is centre-cropped square. With one, the box file decides the
    set: each listed image is cropped to the square around its box (side max(w, h) * box_scale);
    unlisted images are skipped (logged) and listed images that are absent are an error.
    """
    image_dir = Path(image_dir).expanduser()
    files = list_images(image_dir, recursive=recursive)
    by_name = {f.relative_to(image_dir).as_posix(): f for f in files}
    if box_file is not None:
        box_path = Path(box_file).expanduser()
        if not box_path.is_absolute() and not box_path.exists():
            box_path = image_dir / box_path  # a box file kept inside the face folder
        boxes = read_box_file(box_path)
        absent = [name for name in boxes if name not in by_name]
        if absent:
            raise FileNotFoundError(
                f"box file '{box_path}' lists {len(absent)} image(s) not found in '{image_dir}': "
                f"{absent[:5]}; names must be paths relative to the folder (e.g. 'face_01.png')"
            )
        skipped = sorted(set(by_name) - set(boxes))
        if skipped:
            log.info(
                "%d image(s) in %s have no box in %s and are skipped: %s",
                len(skipped),
                image_dir,
                box_path,
                skipped[:5],
            )
        names = sorted(boxes)
    else:
        boxes = {}
        names = sorted(by_name)
    if not names:
        raise FileNotFoundError(
            f"no face images in '{image_dir}' (looked for files ending in "
            ".png/.jpg/.jpeg/.webp/.bmp/.tif/.tiff/.gif); set data.image_dir to a folder of "
            "cartoon faces, or data.image_dir=null for the embedded world's faces"
        )
    faces = []
    for name in names:
        image = read_image(by_name[name])
        if name in boxes:
            square = crop_square(image, *square_box(boxes[name], box_scale))
        else:
            square = center_square(image)
        faces.append(resize_square(square, size))
    if len(faces) >= FEW_SHOT_LIMIT:
        log.info(
            "%d faces in %s: the method is meant for fewer than %d (it works, but is no "
            "longer few-shot)",
            len(faces),
            image_dir,
            FEW_SHOT_LIMIT,
        )
    stacked = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
    return stacked, names


def crop_square_inside(image: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """Crop a square, shifted (not padded) to lie inside the image; side capped at the short side.

    For renders whose heads touch the top edge: padding would mirror hair into the crop.
    """
    height, width = image.shape[:2]
    side = min(side, height, width)
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return np.ascontiguousarray(image[top : top + side, left : left + side])


@torch.no_grad()
def embedded_character_faces(
    count: int,
    size: int,
    seed: int = 0,
    face_fraction: tuple[float, float] = (0.25, 0.35),
    box_scale: float = 1.15,
    chunk: int = 16,
) -> Tensor:
    """`count` character close-ups of the embedded world as uint8 [count, 3, size, size].

    One person per scene, framed as a head-and-shoulders shot (`face_fraction` = face width /
    frame height), rendered at twice the target size (at least 64 px) and cropped to the square
    around the scene's head box (side max(w, h) * box_scale), then resized. Seeds are
    seed .. seed + count - 1, so the set is a pure function of (count, size, seed).
    """
    from portrait_toon.synthesis.procedural import ProceduralWorld  # the synthesis layer

    if count < 1:
        raise ValueError(f"data.num_embedded must be >= 1, got {count}")
    render_size = max(64, 2 * size)
    world = ProceduralWorld(
        resolution=render_size,
        max_people=1,
        people_probs=(1.0,),
        face_fraction_range=face_fraction,
    )
    faces = []
    for start in range(seed, seed + count, chunk):
        seeds = torch.arange(start, min(start + chunk, seed + count), dtype=torch.int64)
        _, scene = world.render(seeds)
        characters = ((scene.character.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for image, box in zip(characters.permute(0, 2, 3, 1).numpy(), scene.head_box[:, 0]):
            x0, y0, x1, y1 = box.tolist()
            square = crop_square_inside(image, *square_box((x0, y0, x1 - x0, y1 - y0), box_scale))
            faces.append(resize_square(square, size))
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# dataset / datamodule


class FaceDataset(Dataset):
    """uint8 faces [N, 3, S, S] served as [-1, 1] floats, repeated to `length` items.

    Item i is face i mod N, mirrored left-right with probability 0.5 when `hflip` (StyleGAN2's
    --mirror; cartoon faces are close to symmetric, so this doubles a tiny set for free).
    """

    def __init__(self, faces: Tensor, length: int | None = None, hflip: bool = True) -> None:
        if faces.ndim != 4 or faces.shape[1] != 3 or faces.dtype != torch.uint8:
            raise ValueError(
                f"faces must be uint8 [N, 3, S, S], got {faces.dtype} {tuple(faces.shape)}"
            )
        if faces.shape[0] == 0:
            raise ValueError("a face set needs at least one image")
        self.faces = faces
        self.length = max(int(length or 0), faces.shape[0])
        self.hflip = hflip

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        face_index = index % self.faces.shape[0]
        image = self.faces[face_index].float() / 127.5 - 1.0
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "index": torch.tensor(face_index)}


class FaceFolderDataModule(pl.LightningDataModule):
    """Loader of a few-shot face set for `StyleGANFinetuneModule`: batches `{"image", "index"}`.

    Args:
        image_dir: folder of cartoon faces (any size/format). None = the embedded world's
            character close-ups (`num_embedded` of them, seeds from `embedded_seed`).
        size: side of the generator's images (faces are cropped square and resized to it).
        box_file: optional CSV/JSON of face boxes (see `read_box_file`); relative paths are
            looked up in the working directory, then inside `image_dir`.
        box_scale: the square around a box has side max(w, h) * box_scale (margin around it).
        samples_per_epoch: tiny sets are repeated so that an epoch has at least this many items
            (an epoch of 2 batches would restart the loader all the time).
        hflip: random left-right mirroring.

    `needs_synthesizer = False`: this data module does not consume the paired-data factory, so
    the train task must not build a PairSynthesizer for it.
    """

    needs_synthesizer = False

    def __init__(
        self,
        image_dir: str | None = None,
        size: int = 256,
        batch_size: int = 8,
        box_file: str | None = None,
        box_scale: float = 1.0,
        recursive: bool = False,
        samples_per_epoch: int = 1024,
        hflip: bool = True,
        num_workers: int = 0,
        num_embedded: int = 16,
        embedded_seed: int = 0,
    ) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"data.size must be a power of two >= 8 (the generator's), got {size}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if box_file is not None and image_dir is None:
            raise ValueError("data.box_file needs data.image_dir (the folder the boxes refer to)")
        self.image_dir = image_dir
        self.size = size
        self.batch_size = batch_size
        self.box_file = box_file
        self.box_scale = box_scale
        self.recursive = recursive
        self.samples_per_epoch = samples_per_epoch
        self.hflip = hflip
        self.num_workers = num_workers
        self.num_embedded = num_embedded
        self.embedded_seed = embedded_seed
        self.faces: Tensor | None = None
        self.names: list[str] = []

    def load_faces(self) -> Tensor:
        """The face set as uint8 [N, 3, size, size] (loaded once, then cached)."""
        if self.faces is None:
            if self.image_dir is None:
                self.faces = embedded_character_faces(
                    self.num_embedded, self.size, seed=self.embedded_seed
                )
                self.names = [f"embedded_{i:03d}" for i in range(self.faces.shape[0])]
                log.info(
                    "data.image_dir is null: using %d character faces of the embedded world",
                    self.faces.shape[0],
                )
            else:
                self.faces, self.names = load_face_folder(
                    self.image_dir,
                    self.size,
                    box_file=self.box_file,
                    box_scale=self.box_scale,
                    recursive=self.recursive,
                )
                log.info("loaded %d faces from %s", self.faces.shape[0], self.image_dir)
        return self.faces

    def setup(self, stage: str | None = None) -> None:
        self.load_faces()

    def train_dataloader(self) -> DataLoader:
        faces = self.load_faces()
        # at least one full batch per epoch, even for 3 faces and batch 8
        length = max(self.samples_per_epoch, self.batch_size, faces.shape[0])
        dataset = FaceDataset(faces, length=length, hflip=self.hflip)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
