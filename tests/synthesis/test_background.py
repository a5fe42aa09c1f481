"""ClassicalToonStylizer: colours kept, fewer colours / less local variance, dark edges."""

from __future__ import annotations

import cv2
import pytest
import torch
from sklearn.datasets import load_sample_image

from portrait_toon.synthesis.background import (
    ClassicalToonStylizer,
    IdentityStylizer,
    soft_quantize,
)
from portrait_toon.synthesis.color import delta_e00, rgb_to_lab


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photos at 96 px, [-1, 1]."""
    images = [
        cv2.resize(load_sample_image(n), (96, 96), interpolation=cv2.INTER_AREA)
        for n in ("china.jpg", "flower.jpg")
    ]
    stacked = torch.stack([torch.from_numpy(im) for im in images]).permute(0, 3, 1, 2)
    return stacked.float() / 127.5 - 1.0


def median_local_variance(images: torch.Tensor) -> torch.Tensor:
    """Per image, the median over pixels of the 3x3 colour variance (robust to strong edges,
    which an edge-preserving filter keeps on purpose)."""
    mean = torch.nn.functional.avg_pool2d(images, 3, 1, 1)
    var = torch.nn.functional.avg_pool2d(images**2, 3, 1, 1) - mean**2
    return var.clamp_min(0).sum(dim=1).flatten(1).median(dim=1).values


def distinct_colours(images: torch.Tensor) -> int:
    quant = ((images + 1) * 127.5).round().to(torch.int64)
    codes = quant[:, 0] * 65536 + quant[:, 1] * 256 + quant[:, 2]
    return sum(torch.unique(c).numel() for c in codes)


def test_keeps_colours_and_simplifies(photos):
    toon = ClassicalToonStylizer()(photos)
    assert toon.shape == photos.shape and toon.dtype == photos.dtype
    assert float(toon.min()) >= -1.0 and float(toon.max()) <= 1.0
    # Colours kept: the global mean colour moves by little (no fixed palette).
    mean_in = rgb_to_lab(photos).mean(dim=(2, 3))
    mean_out = rgb_to_lab(toon).mean(dim=(2, 3))
    assert float(delta_e00(mean_in, mean_out).max()) < 4.0
    # Per-region colours are kept too: 8x8 block means stay close on average.
    block_in = rgb_to_lab(torch.nn.functional.avg_pool2d(photos, 8))
    block_out = rgb_to_lab(torch.nn.functional.avg_pool2d(toon, 8))
    assert float(delta_e00(block_in, block_out).mean()) < 6.0
    # Simplified: far fewer distinct colours.
    assert distinct_colours(toon) < 0.65 * distinct_colours(photos)
    # Flattened (lines left out, they add contrast on purpose): less local variance in every
    # image, much less overall.
    no_lines = ClassicalToonStylizer(edge_strength=0.0)(photos)
    before, after = median_local_variance(photos), median_local_variance(no_lines)
    assert bool((after < before).all())
    assert float(after.sum()) < 0.5 * float(before.sum())


def test_dark_edges_on_strong_edges():
    # A bright square on a mid-grey field: a strong edge; flat regions far from it.
    image = torch.full((1, 3, 48, 48), 0.0)
    image[..., 16:32, 16:32] = 0.8
    with_lines = ClassicalToonStylizer(edge_strength=0.9)(image)
    without = ClassicalToonStylizer(edge_strength=0.0)(image)
    lum_with = rgb_to_lab(with_lines)[:, 0]
    lum_without = rgb_to_lab(without)[:, 0]
    band = torch.zeros(48, 48, dtype=torch.bool)
    band[13:35, 13:35] = True
    band[19:29, 19:29] = False
    flat = torch.ones(48, 48, dtype=torch.bool)
    flat[8:40, 8:40] = False
    # Around the edge some pixels become much darker than without lines ...
    assert float((lum_without - lum_with)[0][band].max()) > 15.0
    # ... while flat areas far from it are untouched by the line pass.
    assert float((lum_without - lum_with)[0][flat].abs().max()) < 0.5


def test_uniform_image_stays_its_colour():
    image = torch.tensor([0.3, -0.2, 0.5]).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()
    toon = ClassicalToonStylizer()(image)
    lab_in, lab_out = rgb_to_lab(image)[:, :, 0, 0], rgb_to_lab(toon)[:, :, 16, 16]
    # Quantisation may move a flat colour by at most about half a bin.
    assert float(delta_e00(lab_in, lab_out)) < 6.0
    assert float(toon.std(dim=(2, 3)).max()) < 1e-3


def test_soft_quantize_levels():
    values = torch.linspace(0, 100, 1001)
    values = values[(values % 10 - 0).abs().gt(0.2) & (values % 10).lt(9.8)]  # off the borders
    hard = soft_quantize(values, step=10.0, sharpness=50.0, offset=5.0)
    levels = torch.unique(hard.round())
    assert set(levels.tolist()) == {5.0 + 10 * k for k in range(10)}
    assert torch.equal(soft_quantize(values, 0.0, 1.0), values)
    # Monotone (no inversions of brightness).
    assert bool((soft_quantize(values, 10.0, 0.5, 5.0).diff() >= -1e-5).all())


def test_batch_independent_and_any_size():
    stylizer = ClassicalToonStylizer()
    images = torch.rand(3, 3, 40, 56) * 2 - 1
    together = stylizer(images)
    alone = stylizer(images[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-4)
    assert together.shape == (3, 3, 40, 56)


def test_identity_and_bad_input():
    images = torch.rand(1, 3, 8, 8)
    assert IdentityStylizer()(images) is images
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ClassicalToonStylizer()(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="edge_strength"):
        ClassicalToonStylizer(edge_strength=2.0)


def test_animegan_stylizer_loads_public_layout_file(tmp_path):
    from portrait_toon.checkpoints import MissingWeightsError
    from portrait_toon.nets.animegan import Generator
    from portrait_toon.synthesis.background import AnimeGANStylizer

    torch.manual_seed(0)
    reference = Generator().eval()
    torch.save(reference.state_dict(), tmp_path / "paprika.pt")  # a bare state_dict, as upstream
    stylizer = AnimeGANStylizer(tmp_path, "paprika.pt")
    stylizer.train()
    assert not stylizer.training and not stylizer.net.training
    images = torch.rand(2, 3, 20, 28) * 2 - 1
    out = stylizer(images)
    assert out.shape == images.shape
    with torch.no_grad():
        assert torch.allclose(out, reference(images).clamp(-1, 1), atol=1e-4)
    # keep_colors=1: the output's mean colour becomes the input's.
    stylizer.keep_colors = 1.0
    keeping = stylizer(images)
    mean_in = rgb_to_lab(images).mean(dim=(2, 3))
    assert float(delta_e00(rgb_to_lab(keeping).mean(dim=(2, 3)), mean_in).max()) < 2.0
    assert float(delta_e00(rgb_to_lab(out).mean(dim=(2, 3)), mean_in).max()) > 2.0
    with pytest.raises(MissingWeightsError, match="face_paint_512_v2.pt"):
        AnimeGANStylizer(tmp_path)


def test_animegan_config_composes(tmp_path, repo_root):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from portrait_toon.nets.animegan import Generator
    from portrait_toon.synthesis.background import AnimeGANStylizer

    torch.save(Generator().state_dict(), tmp_path / "face_paint_512_v2.pt")
    cfg = OmegaConf.load(repo_root / "conf/bg_stylizer/animegan.yaml")
    cfg = OmegaConf.merge({"paths": {"weights_dir": str(tmp_path)}}, {"bg": cfg})
    stylizer = instantiate(cfg.bg)
    assert isinstance(stylizer, AnimeGANStylizer)
