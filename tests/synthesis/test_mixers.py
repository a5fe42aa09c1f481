"""Mixers on tiny random StyleGAN2s: CDSM takes each style and each module from where its
parameters say, layer_swap's alpha = 0 / 1 are G_s / G_t exactly, mixer=none is the photo."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.checkpoints import MissingWeightsError
from portrait_toon.nets.stylegan2 import Generator
from portrait_toon.synthesis.mixers import (
    CDSMMixer,
    LayerSwapMixer,
    NoMixer,
    layer_resolution,
    load_character_code,
)
from portrait_toon.synthesis.sources import StyleGAN2Generator, build_stylegan2

ARCH = {"size": 32, "style_dim": 32, "n_mlp": 2, "channel_max": 16}
N_LATENT = 8  # 2 * log2(32) - 2


@pytest.fixture(scope="module")
def source() -> StyleGAN2Generator:
    return StyleGAN2Generator(None, arch=ARCH, allow_random_init=True, latent_avg_samples=64)


@pytest.fixture(scope="module")
def target_file(tmp_path_factory) -> str:
    """G_t as experiment=finetune_target writes it: a rosinality file from another init."""
    g_t, _ = build_stylegan2(
        None, weights_dir=None, arch=ARCH, allow_random_init=True, init_seed=7, what="G_t"
    )
    # fine-tuning moves every parameter (random init leaves biases at their constants)
    rng = torch.Generator().manual_seed(11)
    state = {
        name: value
        if name.endswith("kernel")
        else value + 0.1 * torch.randn(value.shape, generator=rng)
        for name, value in g_t.state_dict().items()
    }
    path = tmp_path_factory.mktemp("weights") / "G_t.pt"
    latent_avg = torch.randn(ARCH["style_dim"], generator=torch.Generator().manual_seed(3))
    torch.save({"g_ema": state, "latent_avg": latent_avg}, path)
    return str(path)


@pytest.fixture(scope="module")
def g_t(target_file) -> Generator:
    generator, _ = build_stylegan2(
        target_file, weights_dir=None, arch=ARCH, allow_random_init=False, init_seed=0, what="G_t"
    )
    return generator


def code_file(tmp_path, seed: int) -> str:
    w_c = torch.randn(N_LATENT, ARCH["style_dim"], generator=torch.Generator().manual_seed(seed))
    path = tmp_path / f"w_c_{seed}.pt"
    torch.save({"w_c": w_c, "codes": w_c[None]}, path)
    return str(path)


def wplus(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, N_LATENT, ARCH["style_dim"], generator=torch.Generator().manual_seed(seed)
    )


def cdsm(source, target_file, code, **kwargs) -> CDSMMixer:
    return CDSMMixer(source, target_file, character_code=code, **kwargs)


def test_plan_follows_mixing_level_and_torgb_rule(source, target_file, tmp_path):
    mixer = cdsm(source, target_file, code_file(tmp_path, 1), mixing_level=5)
    index = source.generator.latent_index_of_layer
    for entry in mixer.plan:
        assert entry.w_index == index[entry.name]
        expected = entry.w_index >= 5 or entry.kind == "torgb"
        assert (entry.style_from == "character") == expected, entry
    no_torgb = cdsm(
        source, target_file, code_file(tmp_path, 1), mixing_level=5, replace_torgb=False
    )
    for entry in no_torgb.plan:
        assert (entry.style_from == "character") == (entry.w_index >= 5), entry
    # toRGB replacement is what makes the low-resolution ToRGBs differ between the two
    changed = {a.name for a, b in zip(mixer.plan, no_torgb.plan) if a.style_from != b.style_from}
    assert changed == {"to_rgb1", "to_rgbs.0"}  # to_rgbs.1 has W+ index 5 = m anyway


def test_source_latent_changes_only_layers_below_m(source, target_file, tmp_path):
    mixer = cdsm(source, target_file, code_file(tmp_path, 1), mixing_level=5)
    a, b = wplus(0), wplus(1)
    with torch.no_grad():
        styles_a, styles_b = mixer.styles(a), mixer.styles(b)
        reference = source.generator.get_styles(a)
    for entry, sa, sb, ref in zip(mixer.plan, styles_a, styles_b, reference):
        if entry.style_from == "source":
            assert not torch.allclose(sa, sb), entry.name
            torch.testing.assert_close(sa, ref)  # G_s's own affine on the pair's latent
        else:
            assert torch.equal(sa, sb), entry.name
    # W+ entries >= m are never read: changing them leaves the cartoon bit-identical
    edited = a.clone()
    edited[:, 5:] = b[:, 5:]
    assert torch.equal(mixer.render(a), mixer.render(edited))
    edited = a.clone()
    edited[:, :5] = b[:, :5]
    assert not torch.allclose(mixer.render(a), mixer.render(edited))


def test_character_code_changes_only_layers_at_or_above_m_and_torgb(
    source, target_file, g_t, tmp_path
):
    first = cdsm(source, target_file, code_file(tmp_path, 1), mixing_level=5)
    second = cdsm(source, target_file, code_file(tmp_path, 2), mixing_level=5)
    w = wplus(0)
    w_c = load_character_code(
        code_file(tmp_path, 1), weights_dir=None, n_latent=N_LATENT, style_dim=ARCH["style_dim"]
    )
    with torch.no_grad():
        target_styles = g_t.get_styles(w_c[None])
        for entry, s1, s2, st in zip(first.plan, first.styles(w), second.styles(w), target_styles):
            if entry.style_from == "character":
                assert not torch.allclose(s1, s2), entry.name
                torch.testing.assert_close(s1, st.expand_as(s1))  # G_t's affine on w_c
            else:
                assert torch.equal(s1, s2), entry.name
    assert not torch.allclose(first.render(w), second.render(w))


@pytest.mark.parametrize("swap_resolution", [16, 32])
def test_swapped_modules_are_g_t_and_the_others_g_s(
    source, target_file, g_t, tmp_path, swap_resolution
):
    mixer = cdsm(source, target_file, code_file(tmp_path, 1), swap_resolution=swap_resolution)
    g_s_state, g_t_state = source.generator.state_dict(), g_t.state_dict()
    renderer_state = mixer.renderer.state_dict()
    swapped = 0
    for name, tensor in renderer_state.items():
        from_target = layer_resolution(name) >= swap_resolution
        expected = (g_t_state if from_target else g_s_state)[name]
        other = (g_s_state if from_target else g_t_state)[name]
        assert torch.equal(tensor, expected), name
        if not name.endswith("kernel"):  # blur kernels are the same constant in both
            assert not torch.equal(tensor, other), name
        swapped += from_target
    assert swapped > 0
    assert [e.name for e in mixer.plan if e.weights_from == "target"] == (
        source.generator.layers_at_or_above(swap_resolution)
    )


def test_extreme_settings_reproduce_g_s_and_g_t(source, target_file, g_t, tmp_path):
    w = wplus(0)
    code = code_file(tmp_path, 1)
    # m past every W+ index, styles of ToRGBs kept, nothing swapped: plain G_s
    plain = cdsm(
        source, target_file, code, mixing_level=N_LATENT, swap_resolution=64, replace_torgb=False
    )
    torch.testing.assert_close(plain.render(w), source.render(w))
    # m = 0 and every module swapped: G_t(w_c), whatever the source latent
    full = cdsm(source, target_file, code, mixing_level=0, swap_resolution=4)
    w_c = full.w_c[None]
    with torch.no_grad():
        expected = g_t.synthesis_from_styles(g_t.get_styles(w_c)).clamp(-1, 1)
    torch.testing.assert_close(full.render(w), expected.expand(2, -1, -1, -1))


def test_renderer_is_built_once_and_kept_frozen(source, target_file, tmp_path):
    mixer = cdsm(source, target_file, code_file(tmp_path, 1))
    before = {k: v.clone() for k, v in mixer.state_dict().items()}
    mixer.train()
    assert not mixer.training and not any(p.requires_grad for p in mixer.parameters())
    mixer.render(wplus(0))
    assert all(torch.equal(before[k], v) for k, v in mixer.state_dict().items())
    assert not hasattr(mixer, "g_t")  # only the hybrid renderer is kept


def test_missing_code_is_an_error_unless_latent_avg_is_allowed(
    source, target_file, tmp_path, caplog
):
    with pytest.raises(MissingWeightsError, match=r"w_c\.pt(.|\n)*task=character"):
        cdsm(source, target_file, "w_c.pt", weights_dir=str(tmp_path))
    fallback = cdsm(
        source, target_file, "w_c.pt", weights_dir=str(tmp_path), allow_latent_avg_code=True
    )
    latent_avg = torch.load(target_file, weights_only=True)["latent_avg"]
    assert torch.equal(fallback.w_c, latent_avg.expand(N_LATENT, -1))
    assert "latent_avg" in caplog.text


def test_missing_target_names_the_file_and_how_to_make_it(source, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"G_t\.pt(.|\n)*experiment=finetune_target"):
        CDSMMixer(
            source,
            "G_t.pt",
            weights_dir=str(tmp_path),
            character_code=None,
            allow_latent_avg_code=True,
        )


def test_wrong_code_shape_is_explained(source, target_file, tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"w_c": torch.zeros(5, 7)}, path)
    with pytest.raises(ValueError, match=r"\[5, 7\].*\[8, 32\]"):
        cdsm(source, target_file, str(path))


def test_cdsm_needs_a_stylegan2_source(target_file):
    with pytest.raises(TypeError, match="generator=stylegan2"):
        CDSMMixer(torch.nn.Identity(), target_file, character_code=None, allow_latent_avg_code=True)


def test_layer_swap_alpha_zero_is_g_s_and_one_is_g_t(source, target_file, g_t):
    w = wplus(0)
    none_swapped = LayerSwapMixer(source, target_file, swap_resolution=64)
    assert torch.equal(none_swapped.render(w), source.render(w))
    all_swapped = LayerSwapMixer(source, target_file, swap_resolution=4)
    with torch.no_grad():
        expected = g_t.synthesis_from_styles(g_t.get_styles(w)).clamp(-1, 1)
    assert torch.equal(all_swapped.render(w), expected)


def test_layer_swap_blends_each_layer_by_its_resolution(source, target_file, g_t):
    hard = LayerSwapMixer(source, target_file, swap_resolution=16)
    assert [hard.alpha(r) for r in (4, 8, 16, 32)] == [0.0, 0.0, 1.0, 1.0]
    soft = LayerSwapMixer(source, target_file, swap_resolution=16, blend="sigmoid", blend_width=0.5)
    alphas = [soft.alpha(r) for r in (4, 8, 16, 32)]
    assert all(0 < a < 1 for a in alphas) and alphas == sorted(alphas)
    assert alphas[1] < 0.5 < alphas[2]
    g_s_state, g_t_state = source.generator.state_dict(), g_t.state_dict()
    for name in ("convs.1.conv.weight", "convs.3.activate.bias", "to_rgbs.2.conv.weight"):
        a = soft.alpha(layer_resolution(name))
        expected = a * g_t_state[name] + (1 - a) * g_s_state[name]
        torch.testing.assert_close(soft.generator.state_dict()[name], expected)
    with pytest.raises(ValueError, match="blend"):
        LayerSwapMixer(source, target_file, blend="linear")


def test_no_mixer_returns_the_source_image(source):
    seeds = torch.tensor([3, 4])
    photo, latents = source.sample(seeds)
    assert torch.equal(NoMixer(source).render(latents), photo)  # resolution == size here


def test_bf16_cdsm_and_layer_swap_stay_close_to_float32(source, target_file, tmp_path):
    code, w = code_file(tmp_path, 1), wplus(0)
    full = cdsm(source, target_file, code).render(w)
    half = cdsm(source, target_file, code, bf16=True).render(w)
    assert half.dtype == torch.float32 and (full - half).abs().mean() < 0.03
    swap = LayerSwapMixer(source, target_file).render(w)
    swap_half = LayerSwapMixer(source, target_file, bf16=True).render(w)
    assert (swap - swap_half).abs().mean() < 0.03


def test_mixers_render_at_the_source_render_size(source, target_file, tmp_path):
    """A 16 px working size stops every renderer after its 16 px block (render_size=auto):
    the result is the skip image the full render would have refined."""
    small = StyleGAN2Generator(
        None, arch=ARCH, resolution=16, allow_random_init=True, latent_avg_samples=64
    )
    assert small.render_size == 16
    w, code = wplus(4), code_file(tmp_path, 2)
    for full, early, renderer in [
        (mixer := cdsm(source, target_file, code), cdsm(small, target_file, code), "renderer"),
        (LayerSwapMixer(source, target_file), LayerSwapMixer(small, target_file), "generator"),
    ]:
        skips = []
        block = getattr(full, renderer).to_rgbs[1]  # the 16 px ToRGB
        hook = block.register_forward_hook(lambda _m, _i, out, kept=skips: kept.append(out.clone()))
        try:
            assert full.render(w).shape[-1] == 32
        finally:
            hook.remove()
        torch.testing.assert_close(early.render(w), skips[0].clamp(-1, 1))
    assert mixer.render_size == 32
    assert NoMixer(small).render(w).shape[-1] == 16
