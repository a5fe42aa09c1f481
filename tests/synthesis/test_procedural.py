"""Tests of the embedded world (synthesis/world/, its names re-exported by
synthesis/procedural.py): determinism, exact labels, skin tones, framing, the character
rendering, the module wrappers and their Hydra configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from kornia.color import rgb_to_lab
from omegaconf import OmegaConf

from portrait_toon.nets.bisenet import CLASS_ID, HEAD_CLASS_IDS
from portrait_toon.synthesis.procedural import (
    HAIR_STYLES,
    ProceduralGenerator,
    ProceduralMixer,
    ProceduralSegmenter,
    ProceduralWorld,
    Scene,
    skin_lab_from_ita,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
FACE_PARTS = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


def _lab(images: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab((images.clamp(-1, 1) + 1) / 2)


def _ita(lab_mean: torch.Tensor) -> float:
    return math.degrees(math.atan((float(lab_mean[0]) - 50.0) / float(lab_mean[2])))


@pytest.fixture(scope="module")
def world64() -> ProceduralWorld:
    return ProceduralWorld(resolution=64)


@pytest.fixture(scope="module")
def batch64(world64):
    """48 default scenes at 64 px (rendered once for the module)."""
    return world64.render(torch.arange(1000, 1048))


@pytest.fixture(scope="module")
def closeups():
    """Single-person close-ups at 96 px, where every face part is several pixels big."""
    world = ProceduralWorld(resolution=96, people_probs=(1, 0, 0), face_fraction_range=(0.45, 0.6))
    return world.render(torch.arange(16))


def test_same_seeds_give_bitwise_identical_pairs(world64):
    seeds = torch.tensor([5, 17, 2**40 + 3, -9])
    photo_a, scene_a = world64.render(seeds)
    photo_b, scene_b = world64.render(seeds.clone())
    assert torch.equal(photo_a, photo_b)
    for name in ("labels", "character", "character_labels", "person_index", "skin_lab"):
        assert torch.equal(getattr(scene_a, name), getattr(scene_b, name)), name


def test_a_pair_does_not_depend_on_its_batch(world64):
    seeds = torch.arange(1000, 1016)
    photo, scene = world64.render(seeds)
    # Every pair at another position, next to other pairs.
    flipped_photo, flipped = world64.render(seeds.flip(0))
    assert torch.equal(photo, flipped_photo.flip(0))
    assert torch.equal(scene.character, flipped.character.flip(0))
    assert torch.equal(scene.labels, flipped.labels.flip(0))
    # A 1-person and a 3-person pair alone and at the end of a batch of 1-3 person scenes
    # (which changes how many people the batch renders).
    single = int(torch.nonzero(scene.num_people == 1)[0])
    crowd = int(torch.nonzero(scene.num_people == 3)[0])
    for chosen in (single, crowd):
        alone_photo, alone = world64.render(seeds[chosen : chosen + 1])
        mixed = torch.cat([seeds[:chosen], seeds[chosen + 1 :], seeds[chosen : chosen + 1]])
        mixed_photo, together = world64.render(mixed)
        assert torch.equal(alone_photo[0], mixed_photo[-1])
        assert torch.equal(alone.labels[0], together.labels[-1])
        assert torch.equal(alone.character[0], together.character[-1])
        assert torch.equal(alone.character_labels[0], together.character_labels[-1])
        assert torch.equal(alone.skin_ita[0], together.skin_ita[-1])


def test_different_seeds_give_different_scenes(batch64):
    photo, scene = batch64
    flat = photo.flatten(1)
    distances = torch.cdist(flat, flat)
    distances.fill_diagonal_(float("inf"))
    assert distances.min() > 1.0  # no two of 48 photos are (nearly) the same
    assert len({tuple(row.tolist()) for row in scene.labels.flatten(1)}) == len(photo)


def test_outputs_are_well_formed(batch64):
    photo, scene = batch64
    assert photo.shape == scene.character.shape == (48, 3, 64, 64)
    assert photo.dtype == torch.float32 and photo.min() >= -1 and photo.max() <= 1
    assert scene.character.min() >= -1 and scene.character.max() <= 1
    assert scene.labels.dtype == scene.character_labels.dtype == torch.int64
    allowed = set(range(19)) - {6, 9, 15, 18}  # no glasses, earrings, necklaces, hats
    assert set(scene.labels.unique().tolist()) <= allowed
    assert set(scene.character_labels.unique().tolist()) <= allowed
    # Slots follow num_people; slot 0 (the main person) is drawn in every image.
    assert (scene.person_active.sum(1) == scene.num_people).all()
    for i in range(len(photo)):
        drawn = set(scene.person_index[i].unique().tolist()) - {-1}
        assert 0 in drawn and max(drawn) < int(scene.num_people[i])


def test_closeups_contain_every_face_part_in_place(closeups):
    _, scene = closeups
    ears = 0
    for labels in scene.labels:
        present = set(labels.unique().tolist())
        missing = [
            name for name in (*FACE_PARTS, "neck", "hair", "cloth") if CLASS_ID[name] not in present
        ]
        assert not missing, f"missing classes {missing}"
        ears += CLASS_ID["l_ear"] in present or CLASS_ID["r_ear"] in present

        def centre(*names: str, labels: torch.Tensor = labels) -> torch.Tensor:
            mask = torch.isin(labels, torch.tensor([CLASS_ID[name] for name in names]))
            ys, xs = torch.nonzero(mask, as_tuple=True)
            return torch.stack([ys.float().mean(), xs.float().mean()])

        eyes, mouth = centre("l_eye", "r_eye"), centre("mouth", "u_lip", "l_lip")
        assert centre("l_brow")[0] < centre("l_eye")[0] and centre("r_brow")[0] < centre("r_eye")[0]
        assert eyes[0] < centre("nose")[0] < mouth[0] < centre("neck")[0]
        assert centre("l_eye")[1] < centre("r_eye")[1]  # l_ ids are on the image's left
        assert centre("u_lip")[0] < centre("l_lip")[0]
    assert 0 < ears < len(scene.labels)  # optional: some heads show ears, some do not


def test_labels_are_what_is_drawn(batch64):
    photo, scene = batch64
    lab = _lab(photo)
    background_lab = _lab(scene.background)
    is_background = scene.labels == 0
    assert torch.equal(is_background, scene.person_index == -1)
    # Away from people's edges (which are anti-aliased), label-0 pixels show the background
    # itself up to camera noise; person pixels do not.
    near_person = torch.nn.functional.max_pool2d((~is_background).float()[:, None], 3, 1, 1)[:, 0]
    clean = is_background & (near_person == 0)
    delta = (lab - background_lab).norm(dim=1)
    assert delta[clean].median() < 3.0
    assert delta[~is_background].mean() > 10.0
    # Hair pixels have the person's hair colour (up to shading and strand texture).
    for i in range(len(photo)):
        hair = (scene.labels[i] == CLASS_ID["hair"]) & (scene.person_index[i] == 0)
        if hair.sum() >= 30:
            mean = lab[i][:, hair].mean(1)
            assert (mean - scene.hair_lab[i, 0]).abs().max() < 12.0, i


def test_skin_mean_has_the_drawn_ita(batch64):
    photo, scene = batch64
    lab = _lab(photo)
    measured, drawn = [], []
    for i in range(len(photo)):
        skin = (scene.labels[i] == CLASS_ID["skin"]) & (scene.person_index[i] == 0)
        if skin.sum() < 40:
            continue
        mean = lab[i][:, skin].mean(1)
        assert (mean - scene.skin_lab[i, 0]).abs().max() < 1.0
        measured.append(_ita(mean))
        drawn.append(float(scene.skin_ita[i]))
    assert len(measured) >= 24
    errors = torch.tensor(measured) - torch.tensor(drawn)
    assert errors.abs().max() < 2.0
    assert min(drawn) < -35 and max(drawn) > 35  # the check covers dark and light skin


def test_ita_spreads_evenly_over_the_range(world64):
    _, people = world64.draw_parameters(torch.arange(300))
    ita = people["ita"][:, 0]
    assert ita.min() >= -60 and ita.max() <= 60
    share = torch.histc(ita.float(), bins=6, min=-60, max=60) / 300
    assert (share >= 0.10).all() and (share <= 0.25).all(), share
    # The locus: ITA is exact, lightness rises with ITA, b* stays in the skin range.
    lab = skin_lab_from_ita(torch.linspace(-60, 60, 13, dtype=torch.float64))
    ita_back = torch.rad2deg(torch.atan((lab[:, 0] - 50) / lab[:, 2]))
    assert torch.allclose(ita_back, torch.linspace(-60, 60, 13, dtype=torch.float64))
    assert (lab[1:, 0] > lab[:-1, 0]).all() and lab[0, 0] < 30 and lab[-1, 0] > 70
    assert lab[:, 2].min() >= 12 and lab[:, 2].max() <= 23


def test_framing_and_people_counts_spread(world64, batch64):
    scene, people = world64.draw_parameters(torch.arange(400))
    face = people["radius"][:, 0] * 2
    assert face.min() < 0.09 and face.max() > 0.55
    assert (face < 0.12).float().mean() > 0.1 and (face > 0.3).float().mean() > 0.2
    counts = torch.bincount(scene["num_people"], minlength=4)[1:] / 400
    assert torch.allclose(counts, torch.tensor([0.6, 0.25, 0.15], dtype=counts.dtype), atol=0.07)
    groups = ProceduralWorld(64, people_probs=(0, 0, 1)).draw_parameters(torch.arange(20))[0]
    assert (groups["num_people"] == 3).all()
    # Measured on the rendered labels: from full-body shots to faces filling the frame.
    _, rendered = batch64
    face_ids = torch.tensor([CLASS_ID[name] for name in FACE_PARTS])
    area = torch.isin(rendered.labels, face_ids).float().mean((1, 2))
    assert area.min() < 0.01 and area.max() > 0.15
    assert (rendered.num_people > 1).any() and (rendered.num_people == 1).any()


def test_character_has_the_fixed_skin_and_the_same_geometry(batch64, closeups):
    photo, scene = batch64
    char_lab = _lab(scene.character)
    photo_lab = _lab(photo)
    fixed = scene.character_skin_lab
    head_ids = torch.tensor(HEAD_CLASS_IDS)
    spread = []
    for i in range(len(photo)):
        skin = scene.character_labels[i] == CLASS_ID["skin"]
        if skin.sum() >= 40:
            mean = char_lab[i][:, skin].mean(1)
            assert (mean - fixed).norm() < 2.5, (i, mean, fixed)
            spread.append(photo_lab[i][:, scene.labels[i] == CLASS_ID["skin"]].mean(1))
        source_head = torch.isin(scene.labels[i], head_ids)
        char_head = torch.isin(scene.character_labels[i], head_ids)
        iou = (source_head & char_head).sum() / (source_head | char_head).sum()
        assert iou > 0.5, (i, float(iou))
    # The photos' skin varies widely while the character's does not.
    assert torch.stack(spread)[:, 0].std() > 8.0
    # Character eyes are larger, and the character is not the photo.
    _, close = closeups
    eye_ids = torch.tensor([CLASS_ID["l_eye"], CLASS_ID["r_eye"]])
    assert (
        torch.isin(close.character_labels, eye_ids).sum()
        > 1.8 * torch.isin(close.labels, eye_ids).sum()
    )
    assert (scene.character - photo).abs().mean() > 0.1


def test_character_look_is_configurable():
    seeds = torch.arange(4)
    green = ProceduralWorld(
        48, character_skin_rgb=(120, 200, 120), character_hair_rgb=(250, 60, 160)
    )
    _, scene = green.render(seeds)
    lab = _lab(scene.character)
    skin = scene.character_labels == CLASS_ID["skin"]
    mean = lab.permute(1, 0, 2, 3)[:, skin].mean(1)
    assert mean[1] < -20  # green skin: negative a*
    hair = scene.character_labels == CLASS_ID["hair"]
    assert lab.permute(1, 0, 2, 3)[1][hair].mean() > 30  # pink hair: strongly positive a*


def test_non_square_frames_and_hair_styles():
    world = ProceduralWorld(resolution=(40, 72), hair_style_probs=(0, 0, 0, 1, 0))
    photo, scene = world.render(torch.arange(3))
    assert photo.shape == scene.character.shape == (3, 3, 40, 72)
    assert scene.labels.shape == scene.character_labels.shape == (3, 40, 72)
    assert (scene.hair_style[scene.person_active] == HAIR_STYLES.index("curly")).all()


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="people_probs"):
        ProceduralWorld(64, people_probs=(1.0, 0.0))
    with pytest.raises(ValueError, match="hair_colors"):
        ProceduralWorld(64, hair_colors=("green",))
    with pytest.raises(ValueError, match="character_skin_rgb"):
        ProceduralWorld(64, character_skin_rgb=(300, 0, 0))
    with pytest.raises(ValueError, match="ita_range"):
        ProceduralWorld(64, ita_range=(30, -30))
    with pytest.raises(ValueError, match="resolution"):
        ProceduralWorld(8)
    with pytest.raises(ValueError, match="seeds"):
        ProceduralWorld(32).render(torch.tensor([0.5]))


def test_modules_follow_the_interfaces():
    generator, mixer, segmenter = ProceduralGenerator(48), ProceduralMixer(), ProceduralSegmenter()
    assert generator.resolution == 48 and generator.state_dict() == {}
    for module in (generator, mixer, segmenter):
        module.to("cpu")
    seeds = torch.tensor([3, 4])
    photo, latents = generator.sample(seeds)
    assert isinstance(latents, Scene) and latents.batch_size == 2
    character = mixer.render(latents)
    assert torch.equal(character, latents.character)
    assert torch.equal(segmenter.parse(photo, latents), latents.labels)
    assert torch.equal(
        segmenter.parse(character, latents, domain="character"), latents.character_labels
    )
    with pytest.raises(ValueError, match="bisenet"):
        segmenter.parse(photo)
    with pytest.raises(ValueError, match="domain"):
        segmenter.parse(photo, latents, domain="cartoon")
    with pytest.raises(ValueError, match="do not match"):
        segmenter.parse(photo[:, :, :32], latents)
    with pytest.raises(TypeError, match="Scene"):
        mixer.render(torch.zeros(2, 18, 512))
    moved = latents.to("cpu")
    assert torch.equal(moved.labels, latents.labels) and moved.seeds is latents.seeds


def test_hydra_configs_build_the_world():
    parts = {}
    for group in ("generator", "mixer", "segmenter"):
        cfg = OmegaConf.load(CONF / group / "procedural.yaml")
        root = OmegaConf.create({"resolution": 32, group: cfg})
        parts[group] = instantiate(root[group])
    generator = parts["generator"]
    assert isinstance(generator, ProceduralGenerator) and generator.resolution == 32
    # The config's knobs are the constructor's defaults: same pairs either way.
    photo, scene = generator.sample(torch.tensor([11]))
    reference, _ = ProceduralGenerator(32).sample(torch.tensor([11]))
    assert torch.equal(photo, reference)
    assert torch.equal(parts["mixer"].render(scene), scene.character)
    assert torch.equal(parts["segmenter"].parse(photo, scene), scene.labels)
