"""PairSynthesizer with small fake parts (a disc-head world) and, when present, the embedded
procedural world: determinism, batch independence, CutFace/reflection switches, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from portrait_toon.nets.bisenet import CLASS_ID
from portrait_toon.synthesis.background import ClassicalToonStylizer, IdentityStylizer
from portrait_toon.synthesis.color import delta_e00, masked_lab_stats, rgb_to_lab
from portrait_toon.synthesis.latents import generator_for
from portrait_toon.synthesis.pipeline import PairSynthesizer

REPO = Path(__file__).resolve().parents[2]
CHARACTER_SKIN = (250, 225, 210)


def _colour(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1.0


class DiscWorld(nn.Module):
    """Fake generator: a skin disc head with hair and cloth on a textured background; the
    latents carry the exact labels (like the embedded world's Scene)."""

    def __init__(self, resolution: int = 48) -> None:
        super().__init__()
        self.resolution = resolution

    def sample(self, seeds: torch.Tensor):
        size = self.resolution
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        photos, labels, tones = [], [], []
        for seed in seeds.tolist():
            g = generator_for(seed)
            u = torch.rand(6, generator=g)
            cy, cx = size * (0.3 + 0.2 * u[0]), size * (0.35 + 0.3 * u[1])
            radius = size * (0.14 + 0.06 * u[2])
            dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
            label = torch.zeros(size, size, dtype=torch.int64)
            label[(yy > cy + radius) & ((xx - cx).abs() < radius * 1.5)] = CLASS_ID["cloth"]
            label[(dist2 <= (radius * 1.3) ** 2) & (yy < cy)] = CLASS_ID["hair"]
            label[dist2 <= radius**2] = CLASS_ID["skin"]
            label[(dist2 <= radius**2) & ((yy - cy).abs() < 2) & ((xx - cx).abs() < 2)] = CLASS_ID[
                "nose"
            ]
            tone = 40 + 200 * float(u[3])  # dark to light skin
            skin = _colour((tone, tone * 0.75, tone * 0.6))
            background = _colour((255 * float(u[4]), 120, 255 * float(u[5])))
            texture = 0.2 * torch.rand(3, size, size, generator=g) - 0.1
            photo = (background + texture).clone()
            photo = torch.where(label == CLASS_ID["skin"], skin, photo)
            photo = torch.where(label == CLASS_ID["nose"], skin * 0.9, photo)
            photo = torch.where(label == CLASS_ID["hair"], _colour((30, 20, 10)), photo)
            photo = torch.where(label == CLASS_ID["cloth"], _colour((20, 40, 160)), photo)
            photos.append(photo.clamp(-1, 1))
            labels.append(label)
            tones.append(tone)
        return torch.stack(photos), {"labels": torch.stack(labels), "tones": tones}


class DiscCharacter(nn.Module):
    """Fake mixer: the same geometry with the character's fixed light skin and flat colours."""

    def render(self, latents) -> torch.Tensor:
        labels = latents["labels"]
        out = torch.empty(labels.shape[0], 3, *labels.shape[-2:])
        out[:] = _colour((200, 200, 240))
        skin = (labels == CLASS_ID["skin"]) | (labels == CLASS_ID["nose"])
        out = torch.where(skin[:, None], _colour(CHARACTER_SKIN), out)
        return torch.where((labels == CLASS_ID["hair"])[:, None], _colour((90, 40, 120)), out)


class ExactParser(nn.Module):
    """Fake segmenter: the world's exact labels (the same for both domains)."""

    def parse(self, images, latents=None, domain="source") -> torch.Tensor:
        # Like the embedded world's segmenter: only images at the rendered size can be parsed.
        assert images.shape[-2:] == latents["labels"].shape[-2:], "parse before resizing"
        return latents["labels"]


def make(resolution=48, stylizer=None, **options) -> PairSynthesizer:
    return PairSynthesizer(
        DiscWorld(options.pop("generator_resolution", resolution)),
        DiscCharacter(),
        ExactParser(),
        stylizer if stylizer is not None else IdentityStylizer(),
        resolution=resolution,
        base_seed=options.pop("base_seed", 123),
        **options,
    )


def test_outputs_and_shapes():
    synth = make(resolution=32, generator_resolution=48)
    index = torch.arange(5)
    out = synth(index, return_stages=True)
    for key in ("src", "tgt"):
        assert out[key].shape == (5, 3, 32, 32) and out[key].dtype == torch.float32
        assert float(out[key].abs().max()) <= 1.0
    for key in (
        "head_mask",
        "skin_mask",
        "stage_head_mask",
        "stage_skin_mask",
        "character_skin_mask",
    ):
        assert out[key].shape == (5, 1, 32, 32)
        assert float(out[key].min()) >= 0.0 and float(out[key].max()) <= 1.0
    assert out["is_cutface"].dtype == torch.bool and out["is_cutface"].shape == (5,)
    assert torch.equal(out["index"], index)
    for key in ("labels", "character_labels"):
        assert out[key].shape == (5, 32, 32) and out[key].dtype == torch.int64
    for key in ("photo", "character", "background", "composite", "corrected"):
        assert out[key].shape == (5, 3, 32, 32)
    assert "photo" not in synth(index)
    assert not any(p.requires_grad for p in synth.parameters())


def test_same_index_same_pair_and_batch_composition_independent():
    synth = make(stylizer=ClassicalToonStylizer(), cutface={"p": 0.5})
    first = synth(torch.tensor([3, 7, 11, 12, 13, 14]))
    again = synth(torch.tensor([3, 7, 11, 12, 13, 14]))
    for key in ("src", "tgt", "head_mask", "skin_mask", "is_cutface"):
        assert torch.equal(first[key], again[key])
    alone = synth(torch.tensor([7]))
    for key in ("src", "tgt", "head_mask", "skin_mask"):
        assert torch.allclose(first[key][1], alone[key][0], atol=1e-5)
    assert bool(first["is_cutface"][1]) == bool(alone["is_cutface"][0])
    # Different base seed, different pairs.
    other = make(stylizer=ClassicalToonStylizer(), base_seed=124)(torch.tensor([3]))
    assert not torch.allclose(other["src"][0], first["src"][0])


def test_cutface_probability_switch():
    index = torch.arange(12)
    never = make(cutface={"p": 0.0})(index)
    assert not bool(never["is_cutface"].any())
    off = make(cutface={"enabled": False, "p": 1.0})(index)
    assert not bool(off["is_cutface"].any())
    always = make(cutface={"p": 1.0}, crop={"enabled": False})(index, return_stages=True)
    assert bool(always["is_cutface"].all())
    # CutFace pairs are no longer the photo, and their heads are the pasted tiles.
    assert not torch.allclose(always["src"], always["photo"])
    assert float(always["head_mask"].sum()) > 0


def test_cutface_uses_given_landscapes_outside_the_tiles():
    size = 40
    synth = make(resolution=size, cutface={"p": 1.0, "feather": 0.0}, crop={"enabled": False})
    landscapes = torch.zeros(3, 3, 20, 30, dtype=torch.uint8)  # resized to 40x40 inside
    landscapes[:, 1] = 255  # pure green
    out = synth(torch.arange(3), landscapes=landscapes)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1)
    outside = out["head_mask"][:, 0] == 0
    # Pixels that hold no pasted head are landscape or pasted non-head content; a large
    # share is exactly the landscape on both sides (IdentityStylizer: B(L) = L).
    for i in range(3):
        src = out["src"][i][:, outside[i]]
        tgt = out["tgt"][i][:, outside[i]]
        exact = (src == green).all(dim=0)
        assert float(exact.float().mean()) > 0.3
        assert torch.equal(tgt[:, exact], src[:, exact])
    with pytest.raises(ValueError, match="landscapes must be uint8"):
        synth(torch.arange(3), landscapes=landscapes[:2])


def skin_delta(out, image_key, reference_rgb=None, reference_key=None):
    """Per-pair ΔE00 between the mean skin Lab of `image_key` and a reference colour/image."""
    mask = out["stage_skin_mask"]
    mean, _, _ = masked_lab_stats(rgb_to_lab(out[image_key]), mask)
    if reference_key is not None:
        ref, _, _ = masked_lab_stats(rgb_to_lab(out[reference_key]), mask)
    else:
        ref = rgb_to_lab(_colour(reference_rgb)[None])[:, :, 0, 0].expand_as(mean)
    return delta_e00(mean, ref)


@pytest.mark.parametrize("target_skin", ["parse", "eroded"])
def test_color_reflection_switch(target_skin):
    index = torch.arange(6)
    options = {"cutface": {"enabled": False}, "crop": {"enabled": False}}
    on = make(color_reflection={"target_skin": target_skin}, **options)(index, return_stages=True)
    off = make(color_reflection={"enabled": False}, **options)(index, return_stages=True)
    # Off: the target's skin keeps the character's tone.
    assert torch.equal(off["tgt"], off["composite"])
    assert float(skin_delta(off, "tgt", CHARACTER_SKIN).max()) < 1.0
    # On: the target's skin follows the photo's tone (the fake tones span dark to light).
    assert float(skin_delta(on, "tgt", reference_key="photo").max()) < 2.0
    assert float(skin_delta(off, "tgt", reference_key="photo").max()) > 10.0
    # Outside the head nothing changes.
    outside = on["stage_head_mask"].expand_as(on["tgt"]) == 0
    assert torch.equal(on["tgt"][outside], off["tgt"][outside])


@pytest.mark.parametrize("enabled", [True, False])
def test_character_skin_stage_is_where_the_target_has_the_photos_tone(enabled):
    """The stages carry the character's parsed skin even when reflection does not parse it;
    over it the corrected target's mean skin is the photo's (what the skin metric relies on)."""
    options = {"cutface": {"enabled": False}, "crop": {"enabled": False}}
    out = make(color_reflection={"enabled": enabled}, **options)(
        torch.arange(6), return_stages=True
    )
    character_skin = out["character_skin_mask"]
    assert float(character_skin.sum(dim=(1, 2, 3)).min()) > 0
    labels = out["character_labels"][:, None]
    assert torch.equal(
        character_skin > 0, (labels == CLASS_ID["skin"]) | (labels == CLASS_ID["nose"])
    )
    photo_skin, _, _ = masked_lab_stats(rgb_to_lab(out["photo"]), out["stage_skin_mask"])
    target_skin, _, _ = masked_lab_stats(rgb_to_lab(out["tgt"]), character_skin)
    delta = delta_e00(photo_skin, target_skin)
    if enabled:
        assert float(delta.max()) < 1.0
    else:
        assert float(delta.max()) > 10.0


def test_composite_is_character_on_head_and_background_elsewhere():
    out = make(
        stylizer=ClassicalToonStylizer(), cutface={"enabled": False}, crop={"enabled": False}
    )(torch.arange(3), return_stages=True)
    head = out["stage_head_mask"].expand_as(out["composite"])
    assert torch.allclose(out["composite"][head == 1], out["character"][head == 1])
    assert torch.allclose(out["composite"][head == 0], out["background"][head == 0])
    assert not torch.allclose(out["background"], out["photo"])  # the stylizer ran


def test_crop_applies_identically():
    index = torch.arange(4)
    plain = make(
        cutface={"enabled": False}, crop={"enabled": False}, color_reflection={"enabled": False}
    )(index)
    cropped = make(
        cutface={"enabled": False},
        crop={"scale_range": [0.5, 0.7]},
        color_reflection={"enabled": False},
    )(index)
    assert not torch.allclose(plain["src"], cropped["src"])
    # Identity stylizer + no reflection: outside the head src == tgt, and the crop keeps it so.
    outside = cropped["head_mask"].expand_as(cropped["src"]) == 0
    assert torch.allclose(cropped["src"][outside], cropped["tgt"][outside], atol=1e-6)


def test_crop_rounds_recrop_the_same_pairs():
    synth = make(stylizer=ClassicalToonStylizer(), crop={"scale_range": [0.5, 0.8]})
    index = torch.tensor([2, 9, 4])
    pairs = synth.uncropped(index)
    round0, round1 = synth.cropped(pairs, 0), synth.cropped(pairs, 1)
    whole = synth(index)
    for key in ("src", "tgt", "head_mask", "skin_mask"):
        assert torch.equal(round0[key], whole[key])  # forward = uncropped + cropped(round 0)
        assert torch.equal(synth(index, crop_round=1)[key], round1[key])
    assert not torch.allclose(round0["src"], round1["src"])  # another view of each pair
    # and it is the same pair: the uncropped image under round 1's crop parameters
    expected = synth.crop(index, [pairs["src"]], crop_round=1)[0].clamp(-1, 1)
    assert torch.equal(round1["src"], expected)


def test_unknown_and_bad_options():
    with pytest.raises(ValueError, match=r"augmentation.cutface: unknown key\(s\) \['prob'\]"):
        make(cutface={"prob": 0.3})
    with pytest.raises(ValueError, match="target_skin"):
        make(color_reflection={"target_skin": "guess"})
    with pytest.raises(ValueError, match="cutface.p"):
        make(cutface={"p": 2})
    with pytest.raises(ValueError, match="scale_range"):
        make(crop={"scale_range": [0.5, 1.5]})
    with pytest.raises(ValueError, match="index"):
        make()(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="mode"):
        make(color_reflection={"mode": "median"})
    with pytest.raises(ValueError, match="outside the face-parsing table"):
        make(head_mask={"classes": [1, 42]})
    with pytest.raises(ValueError, match="content_scale_range"):
        make(cutface={"content_scale_range": [0.0, 1.0]})
    with pytest.raises(FileNotFoundError, match="landscape_dir"):
        make(cutface={"landscape_dir": "/nonexistent/landscapes"})


def test_real_config_files_compose():
    augmentation = OmegaConf.load(REPO / "conf/augmentation/default.yaml")
    stylizer = instantiate(OmegaConf.load(REPO / "conf/bg_stylizer/classical.yaml"))
    assert isinstance(stylizer, ClassicalToonStylizer)
    assert isinstance(
        instantiate(OmegaConf.load(REPO / "conf/bg_stylizer/identity.yaml")), IdentityStylizer
    )
    synth = PairSynthesizer(
        DiscWorld(32),
        DiscCharacter(),
        ExactParser(),
        stylizer,
        resolution=32,
        base_seed=0,
        **augmentation,
    )
    assert synth.cutface_options["p"] == pytest.approx(0.3)
    out = synth(torch.arange(2))
    assert out["src"].shape == (2, 3, 32, 32)


def test_synthesizer_stays_in_eval_mode():
    synth = make()
    synth.train()
    assert not synth.training and not synth.generator.training


# --- with the embedded world's real parts -----------------------------------------------------


@pytest.fixture(scope="module")
def procedural():
    return pytest.importorskip("portrait_toon.synthesis.procedural")


def procedural_synth(procedural, resolution=64, generator_resolution=64, **options):
    return PairSynthesizer(
        procedural.ProceduralGenerator(generator_resolution),
        procedural.ProceduralMixer(),
        procedural.ProceduralSegmenter(),
        ClassicalToonStylizer(reference_resolution=256),
        resolution=resolution,
        base_seed=5,
        **options,
    )


def test_procedural_pairs_deterministic_and_batch_independent(procedural):
    synth = procedural_synth(procedural, resolution=48, cutface={"p": 0.5})
    pair = synth(torch.tensor([3, 7, 9]), return_stages=True)
    alone = synth(torch.tensor([7]))
    for key in ("src", "tgt", "head_mask", "skin_mask"):
        assert pair[key].shape[-2:] == (48, 48)
        assert torch.allclose(pair[key][1], alone[key][0], atol=1e-5)
    assert torch.equal(pair["src"], synth(torch.tensor([3, 7, 9]))["src"])
    # The parse labels are the world's own, resized from 64 to 48 px: valid class ids.
    assert pair["labels"].shape == (3, 48, 48) and int(pair["labels"].max()) <= 18
    assert float(pair["stage_head_mask"].mean()) > 0.0


def test_procedural_color_reflection_follows_the_photo(procedural):
    from portrait_toon.synthesis.latents import pair_seed
    from portrait_toon.synthesis.parsing import skin_mask

    index = torch.arange(6)
    options = {"cutface": {"enabled": False}, "crop": {"enabled": False}}
    on = procedural_synth(procedural, **options)(index, return_stages=True)
    off = procedural_synth(procedural, color_reflection={"enabled": False}, **options)(
        index, return_stages=True
    )
    _, scene = procedural.ProceduralGenerator(64).sample(pair_seed(5, index, "latent"))
    character_skin = skin_mask(scene.character_labels)
    photo_skin, _, _ = masked_lab_stats(rgb_to_lab(on["photo"]), on["stage_skin_mask"])
    with_reflection, _, _ = masked_lab_stats(rgb_to_lab(on["tgt"]), character_skin)
    without, _, _ = masked_lab_stats(rgb_to_lab(off["tgt"]), character_skin)
    # On: the cartoon's skin takes the photo's mean tone; off: it keeps the character's.
    assert float(delta_e00(with_reflection, photo_skin).max()) < 1.0
    assert float(delta_e00(without, photo_skin).mean()) > 10.0
    character_tone = scene.character_skin_lab.reshape(1, 3).expand_as(without)
    assert float(delta_e00(without, character_tone).max()) < 2.0


def test_shift_region_leaves_the_background_band_alone():
    from portrait_toon.nets.bisenet import HEAD_CLASS_IDS
    from portrait_toon.synthesis.parsing import class_mask, dilate

    options = {
        "cutface": {"enabled": False},
        "crop": {"enabled": False},
        "head_mask": {"dilate": 24.0, "feather": 8.0},  # a wide band at 48 px
    }
    index = torch.arange(4)
    character_only = make(**options)(index, return_stages=True)
    whole_mask = make(color_reflection={"shift_region": "head_mask"}, **options)(
        index, return_stages=True
    )
    parsed_head = class_mask(character_only["labels"], HEAD_CLASS_IDS)
    band = (character_only["stage_head_mask"] > 0.05) & (dilate(parsed_head, 2) == 0)
    band = band.expand_as(character_only["composite"])
    assert bool(band.any())
    # The band is background in the composite: unchanged with the character's head as the
    # shift region, shifted by the skin offset with the paper's plain M_head.
    composite = character_only["composite"]
    assert torch.allclose(character_only["tgt"][band], composite[band], atol=1e-4)
    assert float((whole_mask["tgt"][band] - composite[band]).abs().max()) > 0.05
    with pytest.raises(ValueError, match="shift_region"):
        make(color_reflection={"shift_region": "everything"})


def test_full_body_switch():
    options = {"cutface": {"enabled": False}, "crop": {"enabled": False}}
    index = torch.arange(4)
    on = make(stylizer=ClassicalToonStylizer(), **options)(index, return_stages=True)
    off = make(stylizer=ClassicalToonStylizer(), full_body={"enabled": False}, **options)(
        index, return_stages=True
    )
    # On: X_fb composites the character's head over B(X_src); off: the mixer's whole frame,
    # colour-reflected like X_fb, with the same masks.
    outside = (on["stage_head_mask"] == 0).expand_as(on["tgt"])
    assert torch.equal(on["tgt"][outside], on["background"].clamp(-1, 1)[outside])
    assert torch.equal(off["composite"], off["character"])
    assert not torch.equal(off["tgt"][outside], off["background"].clamp(-1, 1)[outside])
    for key in ("head_mask", "skin_mask", "stage_head_mask", "background"):
        assert torch.equal(on[key], off[key]), key
    plain = make(full_body={"enabled": False}, color_reflection={"enabled": False}, **options)
    out = plain(index)
    assert torch.equal(out["tgt"], plain(index, return_stages=True)["character"].clamp(-1, 1))
    with pytest.raises(ValueError, match="full_body.enabled"):
        make(full_body={"enabled": "no"})
    with pytest.raises(ValueError, match="augmentation.full_body: unknown key"):
        make(full_body={"enable": False})
