"""The two-stage baseline in the embedded world (mixer=procedural_blend, world/blend.py) and the
full-body switch (augmentation.full_body.enabled) with the world's parts: the blended frame
re-renders the background, the composite modes keep B(X_src) outside M_head, and without the
composite the target is the mixer's whole frame."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from portrait_toon import config
from portrait_toon.synthesis.background import ClassicalToonStylizer
from portrait_toon.synthesis.color import delta_e00, rgb_to_lab
from portrait_toon.synthesis.pipeline import PairSynthesizer
from portrait_toon.synthesis.procedural import (
    ProceduralBlendMixer,
    ProceduralGenerator,
    ProceduralMixer,
    ProceduralSegmenter,
)

INDEX = torch.arange(8)
FLAT = {"cutface": {"enabled": False}, "crop": {"enabled": False}}


def synth(mixer, full_body: bool, **options) -> PairSynthesizer:
    return PairSynthesizer(
        ProceduralGenerator(64),
        mixer,
        ProceduralSegmenter(),
        ClassicalToonStylizer(reference_resolution=256),
        resolution=64,
        base_seed=5,
        full_body={"enabled": full_body},
        **{**FLAT, **options},
    )


@pytest.fixture(scope="module")
def baseline():
    """Whole-frame targets without reflection: the plain character and the blended frame."""
    off = {"color_reflection": {"enabled": False}}
    plain = synth(ProceduralMixer(), False, **off)(INDEX, return_stages=True)
    blended = synth(ProceduralBlendMixer(), False, **off)(INDEX, return_stages=True)
    return plain, blended


def _lab_pixels(images: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """CIELAB [N, 3] of the pixels of `images` [B, 3, H, W] where `where` [B, 1, H, W]."""
    return rgb_to_lab(images).permute(0, 2, 3, 1)[where[:, 0]]


def _local_variation(images: torch.Tensor) -> torch.Tensor:
    """|L* - its 3x3 mean| per pixel [B, 1, H, W]: how much detail is left."""
    lightness = rgb_to_lab(images)[:, :1]
    padded = F.pad(lightness, (1, 1, 1, 1), mode="replicate")
    return (lightness - F.avg_pool2d(padded, 3, stride=1)).abs()


def test_blended_frame_rerenders_the_background(baseline):
    plain, blended = baseline
    background = plain["background"]  # B(X_src), the same photos in both runs
    outside = plain["stage_head_mask"] == 0
    assert torch.equal(outside, blended["stage_head_mask"] == 0)
    assert float(outside.float().mean()) > 0.5
    # Far from B(X_src) outside the heads, much farther than the plain character's frame.
    blend_de = delta_e00(_lab_pixels(blended["tgt"], outside), _lab_pixels(background, outside))
    plain_de = delta_e00(_lab_pixels(plain["tgt"], outside), _lab_pixels(background, outside))
    assert float(blend_de.mean()) > 15.0
    assert float(blend_de.mean()) > 2.0 * float(plain_de.mean())
    # Flattened: much less local detail than the stylised photo.
    variation = _local_variation(blended["tgt"])[outside].mean()
    assert float(variation) < 0.6 * float(_local_variation(background)[outside].mean())
    # Colour shifted: every frame's mean a*b* outside the heads moves toward the cast.
    cast = torch.tensor(ProceduralBlendMixer().look.cast_ab)
    for i in range(len(INDEX)):
        where = outside[i : i + 1]
        blend_ab = _lab_pixels(blended["tgt"][i : i + 1], where)[:, 1:].mean(0)
        source_ab = _lab_pixels(background[i : i + 1], where)[:, 1:].mean(0)
        assert float((blend_ab - cast).norm()) < float((source_ab - cast).norm()) - 5.0, i


def test_blended_frame_keeps_the_face_and_is_seeded(baseline):
    plain, blended = baseline
    # The face generator's own domain (face parts and hair) is the character's rendering.
    face = torch.isin(plain["character_labels"], torch.tensor([1, 2, 3, 4, 5, 10, 11, 12, 13, 17]))
    eroded = -F.max_pool2d(-face[:, None].float(), 5, stride=1, padding=2) > 0
    eroded = eroded.expand_as(plain["tgt"])
    assert bool(eroded.any())
    assert torch.allclose(blended["tgt"][eroded], plain["tgt"][eroded], atol=1e-5)
    # A pair's frame is a function of its seed alone (not of its batch), and seeds differ.
    mixer = ProceduralBlendMixer()
    _, scene = ProceduralGenerator(48).sample(torch.tensor([11, 12, 13]))
    _, alone = ProceduralGenerator(48).sample(torch.tensor([12]))
    together, single = mixer.render(scene), mixer.render(alone)
    assert torch.allclose(together[1], single[0], atol=1e-5)
    assert torch.equal(together, mixer.render(scene))
    with pytest.raises(TypeError, match="ProceduralBlendMixer.render needs the Scene"):
        mixer.render(torch.zeros(1, 18, 512))
    with pytest.raises(ValueError, match="mixer.contrast"):
        ProceduralBlendMixer(contrast=1.5)
    with pytest.raises(ValueError, match="cast_rgb"):
        ProceduralBlendMixer(cast_rgb=(300, 0, 0))


@pytest.mark.parametrize("mixer", [ProceduralMixer, ProceduralBlendMixer])
def test_composite_modes_keep_the_stylised_photo_outside_the_head(mixer):
    out = synth(mixer(), True)(INDEX, return_stages=True)  # colour reflection on (default)
    outside = (out["stage_head_mask"] == 0).expand_as(out["tgt"])
    assert float(outside.float().mean()) > 0.5
    assert torch.equal(out["tgt"][outside], out["background"].clamp(-1, 1)[outside])
    assert not torch.equal(out["tgt"], out["character"])


def test_without_the_composite_the_target_is_the_character_rendering(baseline):
    plain, _ = baseline
    assert torch.equal(plain["tgt"], plain["character"].clamp(-1, 1))
    assert torch.equal(plain["composite"], plain["character"])
    # The masks are still made (the metrics read them) and are those of the composite mode.
    composite = synth(ProceduralMixer(), True, color_reflection={"enabled": False})(
        INDEX, return_stages=True
    )
    for key in ("head_mask", "skin_mask", "stage_head_mask", "character_skin_mask"):
        assert torch.equal(plain[key], composite[key]), key
    assert float(plain["head_mask"].mean()) > 0.01


def test_configs_select_the_baseline(tmp_path):
    from portrait_toon.tasks.synthesize import build_synthesizer

    overrides = ["mixer=procedural_blend", "augmentation.full_body.enabled=false", "resolution=32"]
    cfg = config.compose_config("synthesize", overrides, tmp_path / "run")
    built = build_synthesizer(cfg, base_seed=0)
    assert isinstance(built.mixer, ProceduralBlendMixer)
    assert built.full_body_options == {"enabled": False}
    # The yaml's options are the class defaults.
    from_yaml = instantiate(OmegaConf.load(config.CONF_DIR / "mixer" / "procedural_blend.yaml"))
    assert from_yaml.look == ProceduralBlendMixer().look
    out = built(torch.arange(2), return_stages=True)
    assert torch.equal(out["composite"], out["character"])
