"""CutFace: tile sampling (count, size, no overlap, inside) and pasting (L / B(L) outside)."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.synthesis.cutface import (
    CutFacePlan,
    Tile,
    head_box,
    head_boxes,
    paste_tiles,
    sample_cutface,
)
from portrait_toon.synthesis.latents import pair_seed


def plans(count=300, size=(64, 48), **kwargs):
    seeds = pair_seed(0, torch.arange(count), "cutface").tolist()
    return [sample_cutface(s, size, **kwargs) for s in seeds]


def test_probability_and_determinism():
    assert all(p is None for p in plans(p=0.0))
    assert all(p is not None for p in plans(p=1.0))
    share = sum(p is not None for p in plans(count=1000, p=0.3)) / 1000
    assert 0.25 < share < 0.35
    seed = int(pair_seed(0, torch.tensor([3]), "cutface")[0])
    assert sample_cutface(seed, (64, 48), p=1.0) == sample_cutface(seed, (64, 48), p=1.0)


def test_tiles_inside_sized_and_never_overlapping():
    height, width = 64, 48
    counts = []
    for plan in plans(size=(height, width), p=1.0, max_faces=4, side_range=(0.15, 0.5)):
        tiles = plan.tiles
        assert 1 <= len(tiles) <= 4
        counts.append(len(tiles))
        for i, tile in enumerate(tiles):
            assert tile.top >= 0 and tile.left >= 0
            assert tile.top + tile.side <= height and tile.left + tile.side <= width
            assert round(0.15 * 48) <= tile.side <= round(0.5 * 48)
            for other in tiles[i + 1 :]:
                rows = set(range(tile.top, tile.top + tile.side))
                cols = set(range(tile.left, tile.left + tile.side))
                other_rows = set(range(other.top, other.top + other.side))
                other_cols = set(range(other.left, other.left + other.side))
                assert not (rows & other_rows and cols & other_cols)
    # k ~ U{1..4}: every count occurs.
    assert set(counts) == {1, 2, 3, 4}


def test_bad_options():
    with pytest.raises(ValueError, match="cutface.p"):
        sample_cutface(0, (32, 32), p=1.5)
    with pytest.raises(ValueError, match="side_range"):
        sample_cutface(0, (32, 32), side_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="max_faces"):
        sample_cutface(0, (32, 32), max_faces=0)


def pair(size=48):
    """Source: red head disc on blue; target: yellow head disc on green; masks of the disc."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - 20) ** 2 + (xx - 26) ** 2) <= 64).float()[None, None]
    source = torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1) * (1 - disc)
    source = source + torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1) * disc
    target = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1) * (1 - disc)
    target = target + torch.tensor([1.0, 1.0, -1.0]).view(1, 3, 1, 1) * disc
    return source, target, disc, disc * 0.5


@pytest.mark.parametrize("feather", [0.0, 3.0])
def test_paste_keeps_landscapes_outside_and_content_inside(feather):
    size = 48
    source, target, head, skin = pair(size)
    landscape = torch.rand(1, 3, size, size) * 2 - 1
    landscape_toon = torch.rand(1, 3, size, size) * 2 - 1
    plan = sample_cutface(int(pair_seed(0, 5, "cutface")), (size, size), p=1.0)
    src, tgt, out_head, out_skin = paste_tiles(
        source, target, head, skin, landscape, landscape_toon, plan, feather_px=feather
    )
    inside = torch.zeros(size, size, dtype=torch.bool)
    for tile in plan.tiles:
        inside[tile.top : tile.top + tile.side, tile.left : tile.left + tile.side] = True
    outside = ~inside
    # Outside the tiles: exactly L and B(L), masks 0.
    assert torch.equal(src[..., outside], landscape[..., outside])
    assert torch.equal(tgt[..., outside], landscape_toon[..., outside])
    assert float(out_head[..., outside].abs().max()) == 0.0
    # Inside: every tile holds the head; source side is red, target side yellow at the same
    # places (the same boxes and the same crop on both sides).
    core = out_head[0, 0] > 0.99
    assert bool(core.any())
    for tile in plan.tiles:
        assert bool(core[tile.top : tile.top + tile.side, tile.left : tile.left + tile.side].any())
    assert torch.allclose(src[0, :, core], torch.tensor([[1.0], [-1.0], [-1.0]]), atol=0.02)
    assert torch.allclose(tgt[0, :, core], torch.tensor([[1.0], [1.0], [-1.0]]), atol=0.02)
    assert torch.allclose(out_skin, out_head * 0.5, atol=1e-5)
    if feather == 0.0:
        # Hard tiles: red channel = 2 * head - 1 on both sides: colours and masks were cut and
        # resampled with the very same box.
        expected = 2 * out_head[0, 0][inside] - 1
        assert torch.allclose(src[0, 0][inside], expected, atol=1e-5)
        assert torch.allclose(tgt[0, 0][inside], expected, atol=1e-5)
        # Hard tiles: source side away from the head is the source's blue background.
        tile = plan.tiles[0]
        patch_mask = out_head[
            0, 0, tile.top : tile.top + tile.side, tile.left : tile.left + tile.side
        ]
        patch = src[0, :, tile.top : tile.top + tile.side, tile.left : tile.left + tile.side]
        background = patch[:, patch_mask == 0]
        assert torch.allclose(background, torch.tensor([[-1.0], [-1.0], [1.0]]), atol=1e-4)


def test_identical_sides_stay_identical():
    size = 40
    source, _, head, skin = pair(size)
    landscape = torch.rand(1, 3, size, size) * 2 - 1
    plan = CutFacePlan(
        tiles=(Tile(2, 3, 12, 1.3, 0.0, 0.0, True), Tile(20, 20, 16, 1.5, 0.1, -0.1, False))
    )
    src, tgt, _, _ = paste_tiles(source, source, head, skin, landscape, landscape, plan, 2.0)
    assert torch.equal(src, tgt)


def test_head_box():
    _, _, head, _ = pair(48)
    top, left, bottom, right = head_box(head[0])
    assert (top, left, bottom, right) == (12.0, 18.0, 29.0, 35.0)
    assert head_box(torch.zeros(1, 10, 12)) == (0.0, 0.0, 10.0, 12.0)


def test_head_boxes_pick_heads_not_hands():
    labels = torch.zeros(1, 40, 40, dtype=torch.int64)
    labels[0, 5:15, 5:15] = 1  # head skin ...
    labels[0, 5:8, 5:15] = 17  # ... with hair
    labels[0, 25:35, 22:38] = 1  # second head
    labels[0, 29, 26] = 4  # an eye
    labels[0, 30:34, 2:6] = 1  # a hand: skin only
    mask = (labels > 0).float()[:, None]
    everything = head_boxes(mask[0])
    assert len(everything) == 3
    heads = head_boxes(mask[0], labels[0])
    assert sorted(heads) == [(5.0, 5.0, 15.0, 15.0), (25.0, 22.0, 35.0, 38.0)]
    # Only a hand: the largest component is used; nothing at all: the whole image.
    assert head_boxes(mask[0], torch.ones_like(labels[0])) == [(25.0, 22.0, 35.0, 38.0)]
    assert head_boxes(torch.zeros(1, 1, 40, 40)[0]) == [(0.0, 0.0, 40.0, 40.0)]
    # Tiles pick among the heads: with pick in [0, 0.5) the first, [0.5, 1) the second.
    source = torch.where(mask > 0, 1.0, -1.0).expand(1, 3, 40, 40)
    landscape = torch.full((1, 3, 40, 40), -1.0)
    for pick, expected_fill in ((0.1, 1.0), (0.9, 10 / 16)):
        tile = Tile(0, 0, 20, 1.0, 0.0, 0.0, False, pick=pick)
        _, _, out_head, _ = paste_tiles(
            source, source, mask, mask, landscape, landscape, CutFacePlan((tile,)), 0.0, labels
        )
        # Content square = the chosen head box's long side: the 10x10 head fills the tile,
        # the 10x16 one fills 10/16 of its rows.
        fill = float((out_head[0, 0, :20, :20] > 0.5).float().mean())
        assert abs(fill - expected_fill) < 0.06
