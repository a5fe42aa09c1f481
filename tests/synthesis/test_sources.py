"""The StyleGAN2 source generator: seeded per pair, truncated towards latent_avg, resized on the
device; loading rosinality files, missing-file errors and the debug=tiny random init."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.checkpoints import CheckpointMismatchError, MissingWeightsError
from portrait_toon.synthesis.latents import gaussian_latents
from portrait_toon.synthesis.sources import (
    AnimeGANBackground,
    StyleGAN2Generator,
    build_stylegan2,
    resolve_checkpoint,
)

ARCH = {"size": 32, "style_dim": 32, "n_mlp": 2, "channel_max": 16}


def tiny_source(**kwargs) -> StyleGAN2Generator:
    options = {"arch": ARCH, "allow_random_init": True, "latent_avg_samples": 64, **kwargs}
    return StyleGAN2Generator(kwargs.pop("checkpoint", None), **options)


@pytest.fixture(scope="module")
def rosinality_file(tmp_path_factory):
    """A rosinality-format file {g_ema, latent_avg} of a tiny generator."""
    generator, _ = build_stylegan2(
        None, weights_dir=None, arch=ARCH, allow_random_init=True, init_seed=5, what="test"
    )
    latent_avg = torch.randn(ARCH["style_dim"], generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("weights") / "tiny_g.pt"
    torch.save({"g_ema": generator.state_dict(), "latent_avg": latent_avg}, path)
    return path, generator, latent_avg


def test_same_seed_same_pair_whatever_the_batch():
    source = tiny_source()
    images, latents = source.sample(torch.tensor([10, 11, 12]))
    again, _ = source.sample(torch.tensor([12, 10]))
    assert torch.equal(images[2], again[0]) and torch.equal(images[0], again[1])
    assert latents.shape == (3, source.n_latent, ARCH["style_dim"])
    # every W+ entry is the same W (no style mixing), drawn from the pair's own seed
    assert torch.equal(latents[:, :1].expand_as(latents), latents)
    assert not torch.allclose(images[0], images[1])
    assert images.min() >= -1 and images.max() <= 1


def test_latents_are_the_truncated_mapping_of_the_seeded_z(rosinality_file):
    path, generator, latent_avg = rosinality_file
    source = StyleGAN2Generator(str(path), arch=ARCH, truncation=0.5)
    seeds = torch.tensor([3, 4])
    w = generator.get_latent(gaussian_latents(seeds, ARCH["style_dim"]))
    expected = latent_avg + 0.5 * (w - latent_avg)
    torch.testing.assert_close(source.latents(seeds)[:, 0], expected)
    # psi = 0: every pair collapses onto the file's latent_avg
    collapsed = StyleGAN2Generator(str(path), arch=ARCH, truncation=0.0)
    latents = collapsed.latents(seeds)
    assert torch.equal(latents, latent_avg.expand_as(latents))


def test_loaded_generator_renders_like_the_file(rosinality_file):
    path, generator, _ = rosinality_file
    source = StyleGAN2Generator(str(path.name), weights_dir=str(path.parent), arch=ARCH)
    latents = source.latents(torch.tensor([1]))
    with torch.no_grad():
        expected = generator([latents], input_is_latent=True, randomize_noise=False)[0]
    assert torch.equal(source.render(latents), expected.clamp(-1, 1))


def test_output_is_resized_to_the_working_resolution():
    big = tiny_source(resolution=32)
    small = tiny_source(resolution=16, render_size=None)
    seeds = torch.tensor([5, 6])
    full, _ = big.sample(seeds)
    resized, _ = small.sample(seeds)
    assert resized.shape == (2, 3, 16, 16)
    # the same pairs, shrunk with an antialiased bilinear filter (no aliasing of hair detail)
    expected = torch.nn.functional.interpolate(
        full, size=(16, 16), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(resized, expected)


def test_random_init_is_seeded_and_needs_permission(caplog):
    a, b, c = tiny_source(init_seed=3), tiny_source(init_seed=3), tiny_source(init_seed=4)
    assert "RANDOMLY INITIALISED" in caplog.text
    sa, sb, sc = (x.generator.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.conv.weight"], sc["conv1.conv.weight"])
    with pytest.raises(MissingWeightsError, match="allow_random_init"):
        StyleGAN2Generator(None, arch=ARCH)


def test_missing_public_file_names_it_and_make_weights(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        StyleGAN2Generator("stylegan2-ffhq-config-f.pt", weights_dir=str(tmp_path))
    assert "stylegan2-ffhq-config-f.pt" in str(error.value)
    assert "make weights" in str(error.value)
    with pytest.raises(MissingWeightsError, match="nowhere.pt"):
        resolve_checkpoint(tmp_path / "nowhere.pt", None, what="test")


def test_architecture_mismatch_is_a_readable_error(rosinality_file):
    path, _, _ = rosinality_file
    with pytest.raises(CheckpointMismatchError, match="tiny_g.pt"):
        StyleGAN2Generator(str(path), arch={**ARCH, "channel_max": 32})
    with pytest.raises(ValueError, match="unknown key"):
        StyleGAN2Generator(str(path), arch={**ARCH, "channels": 32})


def test_frozen_and_eval():
    source = tiny_source()
    source.train()
    assert not source.training and not source.generator.training
    assert not any(p.requires_grad for p in source.parameters())


def test_animegan_background_falls_back_only_when_allowed(tmp_path, caplog):
    with pytest.raises(MissingWeightsError, match=r"face_paint_512_v2\.pt(.|\n)*make weights"):
        AnimeGANBackground(str(tmp_path))
    stylizer = AnimeGANBackground(str(tmp_path), allow_random_init=True, init_seed=2)
    assert "RANDOMLY INITIALISED AnimeGANv2" in caplog.text
    again = AnimeGANBackground(str(tmp_path), allow_random_init=True, init_seed=2)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    out = stylizer(images)
    assert out.shape == images.shape and torch.equal(out, again(images))
    # with the file present it is the plain AnimeGANStylizer on that file
    torch.save(stylizer.net.state_dict(), tmp_path / "face_paint_512_v2.pt")
    loaded = AnimeGANBackground(str(tmp_path))
    assert torch.equal(loaded(images), out)


def test_bf16_renders_close_to_float32():
    """bf16 (meant for GPUs) measured on CPU at a tiny size: same pairs up to bf16 rounding."""
    fp32, bf16 = tiny_source(), tiny_source(bf16=True)
    assert bf16.generator.conv1.conv.weight.dtype == torch.bfloat16
    assert bf16.generator.style[1].weight.dtype == torch.float32  # mapping kept in fp32
    seeds = torch.tensor([1, 2])
    (a, wa), (b, wb) = fp32.sample(seeds), bf16.sample(seeds)
    assert torch.equal(wa, wb) and b.dtype == torch.float32
    assert (a - b).abs().mean() < 0.03


def test_render_size_stops_at_the_block_above_the_working_resolution():
    seeds = torch.tensor([1, 2])
    full = tiny_source(resolution=16, render_size=None)
    early = tiny_source(resolution=16)  # auto: the 16 px block of the 32 px generator
    odd = tiny_source(resolution=12)  # auto: still the 16 px block, resized to 12
    assert (full.render_size, early.render_size, odd.render_size) == (32, 16, 16)
    wplus = early.latents(seeds)
    # the early exit is exactly the generator's skip image after its 16 px block
    skips = []
    hook = early.generator.to_rgbs[1].register_forward_hook(lambda _m, _i, out: skips.append(out))
    try:
        early.generator([wplus], input_is_latent=True, randomize_noise=False)
    finally:
        hook.remove()
    torch.testing.assert_close(early.render(wplus), skips[0].clamp(-1, 1))
    images, _ = early.sample(seeds)
    assert images.shape == (2, 3, 16, 16) and odd.sample(seeds)[0].shape == (2, 3, 12, 12)
    assert full.render(wplus).shape[-1] == 32
    for bad in (3, 24, 64, "full"):
        with pytest.raises(ValueError, match="render_size"):
            tiny_source(render_size=bad)
