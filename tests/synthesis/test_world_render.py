"""The embedded world renders what it rendered when it was split into the synthesis/world
package (statistics recorded from the single-module renderer; the split was checked bit for bit
with torch.equal on photo, character, labels and every Scene field at 4 resolutions)."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.synthesis.procedural import ProceduralWorld

# name -> (world options, seeds, people per scene, photo stats, character stats, label counts
# of the photo, label counts of the character); stats = (sum, sum of squares, sum x ramp).
RECORDED = {
    "64px": (
        {"resolution": 64},
        range(0, 8),
        [3, 1, 3, 1, 1, 2, 1, 1],
        (-1638.899, 16421.5796, 1466.0251),
        (-9218.7715, 27205.4257, 1978.1635),
        [15965, 2572, 53, 51, 51, 54, 0, 26, 30, 0, 87, 31, 41, 40, 420, 0, 10598, 2749, 0],
        [15823, 2507, 21, 24, 156, 155, 0, 26, 27, 0, 7, 12, 9, 8, 556, 0, 10598, 2839, 0],
    ),
    "96px_groups": (
        {"resolution": 96, "people_probs": (0, 0, 1)},
        range(7, 10),
        [3, 3, 3],
        (-10815.8381, 14415.8022, -3458.0513),
        (-12696.1027, 22358.5435, -2059.2172),
        [9188, 1998, 25, 23, 23, 26, 0, 7, 3, 0, 37, 9, 25, 28, 234, 0, 14576, 1446, 0],
        [9104, 1938, 15, 11, 81, 78, 0, 9, 4, 0, 5, 4, 5, 5, 308, 0, 14576, 1505, 0],
    ),
}


def _stats(images: torch.Tensor) -> list[float]:
    x = images.double()
    ramp = torch.linspace(-1, 1, x.shape[-1], dtype=torch.float64)
    return [float(x.sum()), float(x.square().sum()), float((x * ramp).sum())]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_world_renders_the_recorded_scenes(name):
    options, seeds, people, photo_stats, char_stats, labels, char_labels = RECORDED[name]
    photo, scene = ProceduralWorld(**options).render(torch.tensor(list(seeds)))
    assert scene.num_people.tolist() == people
    # Label counts are exact; image sums allow for last-bit differences of other CPUs' maths.
    assert torch.bincount(scene.labels.flatten(), minlength=19).tolist() == labels
    assert torch.bincount(scene.character_labels.flatten(), minlength=19).tolist() == char_labels
    assert _stats(photo) == pytest.approx(photo_stats, rel=1e-6, abs=2e-3)
    assert _stats(scene.character) == pytest.approx(char_stats, rel=1e-6, abs=2e-3)
