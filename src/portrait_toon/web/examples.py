"""The page's example images: photos that ship inside installed packages (no download) and
held-out frames of the embedded world, written once as PNG files the page can serve.

Built-in photos, all in the scikit-image wheel:
- `astronaut`: Eileen Collins, NASA (NASA Great Images), public domain;
- `camera`: a person with a camera, by Lav Varshney, CC0 (greyscale; given to F as RGB);
- `chelsea`: Stefan van der Walt's cat, CC0;
- `coffee`: a coffee cup, by Rachel Michetti (courtesy of Pikolo Espresso Bar), CC0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portrait_toon.data.images import write_image

__all__ = ["BUILTIN_EXAMPLES", "PHOTOS", "WORLD", "Example", "builtin_image", "write_examples"]

#: The page's example groups.
PHOTOS = "Photos (scikit-image)"
WORLD = "Embedded world, held-out frames (what the demo model was trained on)"


@dataclass(frozen=True)
class Example:
    """One example image on the page: its file, its group on the page, a short label and who
    made it (empty for the world's frames, which the project renders)."""

    path: Path
    group: str
    label: str
    credit: str = ""


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


BUILTIN_EXAMPLES: dict[str, tuple[Callable[[], np.ndarray], str, str]] = {
    "astronaut": (
        _skimage("astronaut"),
        "astronaut",
        "Eileen Collins, NASA, public domain",
    ),
    "camera": (_skimage("camera"), "camera", "Lav Varshney, CC0"),
    "chelsea": (_skimage("chelsea"), "cat", "Stefan van der Walt, CC0"),
    "coffee": (
        _skimage("coffee"),
        "coffee",
        "Rachel Michetti, courtesy of Pikolo Espresso Bar, CC0",
    ),
}
"""name -> (loader of the image array, label, credit); all ship in scikit-image."""


def builtin_image(name: str) -> np.ndarray:
    """A built-in example as uint8 [H, W, 3] RGB (greyscale ones repeated to three channels)."""
    if name not in BUILTIN_EXAMPLES:
        raise ValueError(
            f"examples.builtin: unknown image {name!r}; choose from {sorted(BUILTIN_EXAMPLES)}"
        )
    image = np.asarray(BUILTIN_EXAMPLES[name][0](), dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def write_examples(
    folder: str | Path,
    builtin: Sequence[str],
    world_frames: Sequence[np.ndarray] = (),
    *,
    world_indices: Sequence[int] = (),
) -> list[Example]:
    """Write the chosen built-in photos, then the world frames, as PNGs into `folder`.

    `world_indices` (optional, one per frame) name each frame's held-out pair index.
    """
    folder = Path(folder)
    examples = []
    for name in builtin:
        image = builtin_image(name)
        _, label, credit = BUILTIN_EXAMPLES[name]
        path = write_image(folder / f"{name}.png", image, overwrite=True)
        examples.append(Example(path, PHOTOS, label, credit))
    for number, frame in enumerate(world_frames):
        index = world_indices[number] if number < len(world_indices) else number
        path = write_image(folder / f"world_{number}.png", frame, overwrite=True)
        examples.append(Example(path, WORLD, f"held-out pair {index}"))
    return examples
