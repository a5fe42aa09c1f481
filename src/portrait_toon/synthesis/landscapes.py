"""Landscape photos for CutFace (docs/method.md §3): built-in pictures or a user folder.

Built-in pictures ship inside installed packages, so CutFace works offline with no download:
- scikit-learn `china.jpg` (Summer Palace, by danielbuechele) and `flower.jpg` (by vultilion),
  both CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/), retrieved from Flickr by
  Robert Layton for scikit-learn's sample images;
- scikit-image `coffee` (CC0, Rachel Michetti, courtesy of Pikolo Espresso Bar) and `rocket`
  (DSCOVR launch on Falcon 9, SpaceX, released into the public domain).
People's faces (scikit-image `astronaut`) and grey textures are left out on purpose: a face in
a "background" would teach the network the opposite of what CutFace is for.

Held-out pictures (`LandscapeBank(holdout=True)`), never in a training bank: the evaluation's
"unseen landscape" frames (make ablation) put pasted heads on them, to measure how F treats a
real background it never saw. All ship in the scikit-image wheel:
- `motorcycle` (left view of the Middlebury stereo pair, Scharstein et al., research use),
- `hubble` (Hubble eXtreme Deep Field, NASA/ESA, public domain),
- `chelsea` (Stefan van der Walt's cat, CC0).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from portrait_toon.synthesis.latents import generator_for

log = logging.getLogger(__name__)

__all__ = ["BUILTIN_LANDSCAPES", "HELDOUT_LANDSCAPES", "IMAGE_SUFFIXES", "LandscapeBank"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def _sklearn_image(name: str) -> Callable[[], np.ndarray]:
    @functools.cache  # decoded once per process, shared by every bank
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _skimage_image(name: str, view: int | None = None) -> Callable[[], np.ndarray]:
    """Loader of `skimage.data.<name>()`; `view` picks one image of a function returning
    several (the stereo pair's left view)."""

    @functools.cache
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image if view is None else image[view]

    return load


BUILTIN_LANDSCAPES: dict[str, Callable[[], np.ndarray]] = {
    "china": _sklearn_image("china.jpg"),
    "flower": _sklearn_image("flower.jpg"),
    "coffee": _skimage_image("coffee"),
    "rocket": _skimage_image("rocket"),
}
"""name -> loader of a uint8 HWC RGB array (see the module docstring for the credits)."""

HELDOUT_LANDSCAPES: dict[str, Callable[[], np.ndarray]] = {
    "motorcycle": _skimage_image("stereo_motorcycle", view=0),
    "hubble": _skimage_image("hubble_deep_field"),
    "chelsea": _skimage_image("chelsea"),
}
"""Built-in pictures that no training bank uses (the evaluation's unseen landscapes)."""


def _read_user_image(path: Path) -> np.ndarray:
    """uint8 HWC RGB via the project's safe reader (EXIF, alpha, 16-bit handled).

    Imported lazily: `data` sits above `synthesis` in the dependency order, and images.py is a
    leaf I/O module, so the late import cannot form a cycle. OpenCV is the fallback.
    """
    try:
        from portrait_toon.data.images import read_image
    except ImportError:
        read_image = None
    if read_image is not None:
        return read_image(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"landscape image {path} could not be read (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _list_user_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted (hidden files skipped when the project's
    lister is available)."""
    try:
        from portrait_toon.data.images import list_images
    except ImportError:
        list_images = None
    if list_images is not None:
        return list_images(folder, recursive=True)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _downscale(image: np.ndarray, short_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    if min(height, width) <= short_side:
        return image
    factor = short_side / min(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class LandscapeBank:
    """Landscape photos, decoded once; `sample(seed, size)` is a random crop, deterministic.

    `image_dir=None` uses the built-in pictures (`builtin` names a subset of
    `BUILTIN_LANDSCAPES`, or with `holdout=True` of `HELDOUT_LANDSCAPES`, all of them by
    default: the pictures training never sees); otherwise every image under `image_dir`
    (recursively, sorted) is used. Images are kept with their short side at most `max_side`;
    for each requested size a downscaled copy is cached so that sampling only ever resizes a
    little.
    `scale_range` is the crop's short side as a fraction of the largest crop of the output's
    aspect that fits the picture; crops are flipped left-right with probability 0.5.
    """

    def __init__(
        self,
        image_dir: str | Path | None = None,
        builtin: Sequence[str] | None = None,
        max_side: int = 1024,
        scale_range: tuple[float, float] = (0.5, 1.0),
        flip: bool = True,
        holdout: bool = False,
    ) -> None:
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                "LandscapeBank: scale_range must satisfy 0 < low <= high <= 1, "
                f"got {list(scale_range)}"
            )
        self.image_dir = None if image_dir is None else Path(image_dir)
        self.holdout = bool(holdout)
        self._builtins = HELDOUT_LANDSCAPES if self.holdout else BUILTIN_LANDSCAPES
        self.builtin = tuple(self._builtins if builtin is None else builtin)
        unknown = [name for name in self.builtin if name not in self._builtins]
        if unknown:
            raise ValueError(
                f"LandscapeBank: unknown {'held-out' if self.holdout else 'built-in'} "
                f"landscapes {unknown}; available: {sorted(self._builtins)}"
            )
        self.max_side = max_side
        self.scale_range = (low, high)
        self.flip = flip
        self._images: list[np.ndarray] | None = None
        self._names: list[str] = []
        self._cache: dict[int, list[np.ndarray]] = {}

    def _load(self) -> list[np.ndarray]:
        if self._images is not None:
            return self._images
        images: list[np.ndarray] = []
        if self.image_dir is None:
            if not self.builtin:
                raise ValueError("LandscapeBank: no image_dir and no built-in landscapes chosen")
            for name in self.builtin:
                images.append(_downscale(self._builtins[name](), self.max_side))
                self._names.append(name)
        else:
            if not self.image_dir.is_dir():
                raise FileNotFoundError(
                    f"cutface.landscape_dir {self.image_dir} is not a directory; point it to a "
                    "folder of landscape photos or set it to null for the built-in ones"
                )
            paths = _list_user_images(self.image_dir)
            if not paths:
                raise FileNotFoundError(
                    f"cutface.landscape_dir {self.image_dir} holds no images "
                    f"({', '.join(IMAGE_SUFFIXES)}); add some or set it to null"
                )
            for path in paths:
                images.append(_downscale(_read_user_image(path), self.max_side))
                self._names.append(str(path.relative_to(self.image_dir)))
            log.info("LandscapeBank: %d landscapes from %s", len(images), self.image_dir)
        self._images = images
        return images

    @property
    def names(self) -> list[str]:
        self._load()
        return list(self._names)

    def __len__(self) -> int:
        return len(self._load())

    def _images_for(self, size: tuple[int, int]) -> list[np.ndarray]:
        """Copies downscaled so that the smallest crop still has >= max(size) pixels a side."""
        short_side = math.ceil(max(size) / self.scale_range[0])
        if short_side not in self._cache:
            self._cache[short_side] = [_downscale(im, short_side) for im in self._load()]
        return self._cache[short_side]

    def sample(self, seed: int, size: tuple[int, int]) -> torch.Tensor:
        """A random crop resized to `size = (h, w)`: uint8 Tensor [3, h, w], a function of seed."""
        height, width = int(size[0]), int(size[1])
        if height <= 0 or width <= 0:
            raise ValueError(f"LandscapeBank.sample: size must be positive, got {size}")
        images = self._images_for((height, width))
        generator = generator_for(int(seed))
        draws = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        image = images[min(int(draws[0] * len(images)), len(images) - 1)]
        img_h, img_w = image.shape[:2]
        # Largest crop of the output's aspect ratio inside the picture, then scaled down.
        aspect = width / height
        full_w = min(img_w, img_h * aspect)
        full_h = full_w / aspect
        scale = self.scale_range[0] + draws[1] * (self.scale_range[1] - self.scale_range[0])
        crop_w = max(1, min(img_w, round(full_w * scale)))
        crop_h = max(1, min(img_h, round(full_h * scale)))
        top = int(draws[2] * (img_h - crop_h + 1))
        left = int(draws[3] * (img_w - crop_w + 1))
        crop = image[top : top + crop_h, left : left + crop_w]
        interpolation = cv2.INTER_AREA if crop_h >= height else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (width, height), interpolation=interpolation)
        if self.flip and draws[4] < 0.5:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous()

    def sample_batch(self, seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`sample` for each seed: uint8 [B, 3, h, w]."""
        seeds = torch.as_tensor(seeds).reshape(-1).tolist()
        if not seeds:
            return torch.empty(0, 3, int(size[0]), int(size[1]), dtype=torch.uint8)
        return torch.stack([self.sample(int(s), size) for s in seeds])
