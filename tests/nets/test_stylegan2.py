"""StyleGAN2 (rosinality layout): strict checkpoint layout, upstream golden vectors, the fast ops
against their references, the style-space API and autograd."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from golden import check_stored as golden_check_stored
from golden import fill_state_dict, load_golden, sha256_mismatches

from portrait_toon.nets.stylegan2 import (
    Discriminator,
    Generator,
    ModulatedConv2d,
    make_blur_kernel,
    modulated_conv2d_reference,
    upfirdn2d,
    upfirdn2d_reference,
)

# tests/data/golden/README.md section 4
IMG_TOL = {"atol": 2e-4, "rtol": 1e-4}  # SG2 images, discriminator, float32 crops
MAP_TOL = {"atol": 1e-4, "rtol": 1e-4}  # mapping output / latents
F16_TOL = {"atol": 1e-4, "rtol": 1e-3}  # `.f16` tensors vs golden.float()
GOLDEN_FILE = "stylegan2_rosinality_256.pt"

TINY = {"size": 64, "style_dim": 64, "n_mlp": 2, "channel_max": 32}


def manifest_entries(path) -> tuple[list[str], dict[str, dict]]:
    manifest = json.loads(path.read_text())
    return manifest["state_dict_key_order"], {**manifest["params"], **manifest["buffers"]}


def check_stored(actual: torch.Tensor, golden: dict, key: str) -> None:
    """Compare with whatever the golden file stores under `key` (full, .f16, crop, grid, stats)."""
    assert f"{key}.nc_mean" in golden, f"golden has no statistics for {key}"
    golden_check_stored(actual, golden, key, tol=IMG_TOL, f16_tol=F16_TOL, std_atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Checkpoint layout (manifests)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("kind", ["g", "d"])
def test_state_dict_matches_manifest(manifests_dir, kind: str, size: int) -> None:
    order, entries = manifest_entries(manifests_dir / f"stylegan2_rosinality_{kind}_{size}.json")
    net = Generator(size, 512, 8, channel_multiplier=2) if kind == "g" else Discriminator(size)
    own = net.state_dict()
    assert list(own) == order  # same keys, same order (buffers included)
    for key, tensor in own.items():
        assert list(tensor.shape) == entries[key]["shape"], key
        assert str(tensor.dtype) == f"torch.{entries[key]['dtype']}", key
    zeros = {
        k: torch.zeros(entries[k]["shape"], dtype=getattr(torch, entries[k]["dtype"]))
        for k in order
    }
    result = net.load_state_dict(zeros, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    num_params = sum(p.numel() for p in net.parameters())
    assert (
        num_params
        == json.loads((manifests_dir / f"stylegan2_rosinality_{kind}_{size}.json").read_text())[
            "num_params"
        ]
    )


def test_generator_attributes_match_upstream() -> None:
    g = Generator(256)
    assert (g.size, g.log_size, g.n_latent, g.num_layers, g.style_dim) == (256, 8, 14, 13, 512)
    assert g.channels[64] == 512 and g.channels[256] == 128
    assert len(g.make_noise()) == g.num_layers
    assert [n.shape[-1] for n in g.make_noise()] == [
        4,
        8,
        8,
        16,
        16,
        32,
        32,
        64,
        64,
        128,
        128,
        256,
        256,
    ]


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(100)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(2048)


# ------------------------------------------------------------------------------------------------
# Golden vectors (upstream outputs with golden-fill-v1 weights)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(golden_dir) -> dict:
    return load_golden(golden_dir / GOLDEN_FILE)


@pytest.fixture(scope="module")
def golden_weights(golden, manifests_dir) -> dict[str, dict]:
    return {
        "G": fill_state_dict(
            manifests_dir / "stylegan2_rosinality_g_256.json", "R",
            kernel=golden["const.G.blur_kernel_up"],
        ),
        "D": fill_state_dict(
            manifests_dir / "stylegan2_rosinality_d_256.json", "R",
            kernel=golden["const.D.blur_kernel_down"],
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def golden_nets(golden_weights) -> tuple[Generator, Discriminator]:
    g = Generator(256, 512, 8, channel_multiplier=2).eval()
    g.load_state_dict(golden_weights["G"], strict=True)
    d = Discriminator(256, channel_multiplier=2).eval()
    d.load_state_dict(golden_weights["D"], strict=True)
    return g, d


def run_golden_cases(g: Generator, d: Discriminator, golden: dict) -> dict[str, torch.Tensor]:
    """Every forward call of the golden file (golden README 3.1), case a with intermediates."""
    z_a, z_b = golden["in.z_a"], golden["in.z_b"]
    out: dict[str, torch.Tensor] = {}
    names = {"conv1": g.conv1, "to_rgb1": g.to_rgb1}
    names |= {f"convs.{i}": m for i, m in enumerate(g.convs)}
    names |= {f"to_rgbs.{i}": m for i, m in enumerate(g.to_rgbs)}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, o, name=name: out.__setitem__(f"inter.a.{name}", o.clone())
        )
        for name, module in names.items()
    ]
    with torch.no_grad():
        out["w"] = g.style(z_a)
        out["a.img"], out["a.latent"] = g([z_a], randomize_noise=False, return_latents=True)
        for hook in hooks:
            hook.remove()
        out["b.img"], _ = g(
            [z_a], truncation=0.7, truncation_latent=golden["in.trunc_latent"],
            randomize_noise=False,
        )  # fmt: skip
        out["c.img"], out["c.latent"] = g(
            [z_a, z_b], inject_index=4, randomize_noise=False, return_latents=True
        )
        w_rep = out["w"].unsqueeze(1).repeat(1, 14, 1)
        out["d.img"], _ = g([w_rep], input_is_latent=True, randomize_noise=False)
        out["d2.img"], _ = g([out["w"]], input_is_latent=True, randomize_noise=False)
        out["e.img"], _ = g([golden["in.w_plus"]], input_is_latent=True, randomize_noise=False)

        # D's input is upstream's image as stored; the compact set keeps only a sample of it,
        # so there D reads our own case-a image (within 4e-5 of upstream's, while D's outputs
        # move by under 1e-5 for it: far inside IMG_TOL).
        img_a = golden.get("out.a.img", out["a.img"])
        hooks = [
            d.convs.register_forward_hook(lambda _m, _i, o: out.__setitem__("inter.D.a.convs", o)),
            d.final_conv.register_forward_hook(
                lambda _m, _i, o: out.__setitem__("inter.D.a.final_conv", o)
            ),
        ]
        out["D.a"] = d(img_a)
        for hook in hooks:
            hook.remove()
        out["D.b4"] = d(torch.cat([img_a, img_a.flip(3)]))
        out["D.b8"] = d(torch.cat([img_a, img_a.flip(3), img_a.flip(2), img_a.flip(2, 3)]))
        out["D.1"] = d(img_a[:1])
    return out


@pytest.fixture(scope="module")
def golden_run(golden_nets, golden) -> dict[str, torch.Tensor]:
    return run_golden_cases(*golden_nets, golden)


def test_golden_weights_rebuild_exactly(golden, golden_weights) -> None:
    # A rule bug, not a model bug, if this fails (golden README section 1).
    assert sha256_mismatches(golden_weights["G"], golden["weights.G.sha256"]) == []
    assert sha256_mismatches(golden_weights["D"], golden["weights.D.sha256"]) == []


def test_golden_mapping_and_latents(golden, golden_run) -> None:
    torch.testing.assert_close(golden_run["w"], golden["out.a.w"], **MAP_TOL)
    torch.testing.assert_close(golden_run["a.latent"], golden["out.a.latent"], **MAP_TOL)
    # Mixing at inject_index 4: W+ rows 0-3 from z_a, 4-13 from z_b.
    w_b = golden_run["c.latent"][:, 4:]
    torch.testing.assert_close(golden_run["c.latent"][:, :4], golden["out.a.latent"][:, :4])
    assert torch.equal(w_b, w_b[:, :1].expand_as(w_b))
    assert not torch.allclose(w_b[:, 0], golden["out.a.w"])


@pytest.mark.parametrize("case", ["a", "b", "c", "d", "e"])
def test_golden_images(golden, golden_run, case: str) -> None:
    check_stored(golden_run[f"{case}.img"], golden, f"out.{case}.img")


def test_golden_latent_input_equals_z_input(golden, golden_run) -> None:
    # Cases d and d2: feeding W (repeated or not) with input_is_latent reproduces case a.
    check_stored(golden_run["d.img"], golden, "out.a.img")
    check_stored(golden_run["d2.img"], golden, "out.a.img")


def test_golden_generator_intermediates(golden, golden_run) -> None:
    keys = [
        k[: -len(".shape")] for k in golden if k.startswith("inter.a.") and k.endswith(".shape")
    ]
    assert len(keys) == 2 + 12 + 6
    for key in keys:
        check_stored(golden_run[key], golden, key)


@pytest.mark.parametrize("case", ["D.a", "D.b4", "D.b8", "D.1"])
def test_golden_discriminator(golden, golden_run, case: str) -> None:
    torch.testing.assert_close(golden_run[case], golden[f"out.{case}"], **IMG_TOL)


def test_golden_discriminator_intermediates(golden, golden_run) -> None:
    for key in ("inter.D.a.convs", "inter.D.a.final_conv"):
        check_stored(golden_run[key], golden, key)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["reference", "weight", "activation"])
def test_golden_images_every_modconv_impl(golden, golden_nets, impl: str) -> None:
    g, d = golden_nets
    g.set_modconv_impl(impl)
    try:
        run = run_golden_cases(g, d, golden)
    finally:
        g.set_modconv_impl("auto")
    for case in "abce":
        check_stored(run[f"{case}.img"], golden, f"out.{case}.img")


# ------------------------------------------------------------------------------------------------
# Fast ops against their references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("up", "down", "pad"),
    [
        (1, 1, (1, 1)),  # G up-conv blur
        (1, 1, (2, 2)),  # D blur before a stride-2 3x3
        (1, 2, (1, 1)),  # D skip: blur + decimate
        (2, 1, (2, 1)),  # ToRGB skip upsampling (asymmetric pad)
        (1, 1, (2, 1)),  # asymmetric blur
        (2, 1, (1, 1)),  # no conv_transpose match -> reference
        (2, 2, (1, 2)),  # up and down -> reference
        (1, 1, (-1, 2, 0, 1)),  # cropping pad, per-axis
    ],
)
def test_upfirdn2d_fast_matches_reference(up: int, down: int, pad: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 11, generator=gen)
    kernel = torch.rand(4, 4, generator=gen)  # asymmetric: a missing/double flip would show
    bias = torch.randn(3, generator=gen)
    ref = upfirdn2d_reference(x, kernel, up, down, pad)
    torch.testing.assert_close(upfirdn2d(x, kernel, up, down, pad), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        upfirdn2d(x.to(memory_format=torch.channels_last), kernel, up, down, pad, bias=bias),
        ref + bias.view(1, 3, 1, 1), atol=1e-5, rtol=1e-5,
    )  # fmt: skip


def test_upfirdn2d_reference_semantics() -> None:
    # A unit impulse through up=2 lands at even positions; the filter is a convolution
    # (flipped correlation), so an impulse reproduces the kernel itself.
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    kernel = torch.arange(1.0, 10.0).view(3, 3)
    out = upfirdn2d_reference(x, kernel, pad=(1, 1))
    torch.testing.assert_close(out[0, 0], kernel)
    up = upfirdn2d_reference(x, torch.ones(1, 1), up=2)
    assert up.shape[-2:] == (6, 6) and up[0, 0, 2, 2] == 1 and up.sum() == 1
    down = upfirdn2d_reference(torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 1), down=2)
    torch.testing.assert_close(down[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))


@pytest.mark.parametrize("impl", ["weight", "activation"])
@pytest.mark.parametrize(
    ("batch", "kernel_size", "upsample", "demodulate", "layout"),
    [
        (3, 3, False, True, "nchw"),
        (3, 3, True, True, "channels_last"),
        (1, 3, True, True, "nchw"),
        (2, 3, False, False, "grouped"),
        (3, 1, False, False, "channels_last"),  # ToRGB
        (2, 1, False, True, "grouped"),
    ],
)
def test_modulated_conv_impls_match_reference(
    impl: str, batch: int, kernel_size: int, upsample: bool, demodulate: bool, layout: str
) -> None:
    torch.manual_seed(1)
    conv = ModulatedConv2d(6, 5, kernel_size, 8, demodulate=demodulate, upsample=upsample)
    x = torch.randn(batch, 6, 7, 7)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "grouped":  # (H, W, B, C) memory, as the grouped path produces it
        x = x.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    styles = torch.randn(batch, 6) + 1.0
    bias = torch.randn(5)
    blur = conv.blur.kernel if upsample else None
    ref = modulated_conv2d_reference(x, conv.weight, styles, demodulate, upsample, blur)
    expected = (ref + bias.view(1, -1, 1, 1)) * math.sqrt(2)
    conv.impl = impl
    out = conv(x, styles, bias=bias, gain=math.sqrt(2))
    torch.testing.assert_close(out, expected)
    # Autograd off: in-place epilogues, and the input may be consumed (scaled in place).
    with torch.no_grad():
        out = conv(x.clone(), styles, bias=bias, gain=math.sqrt(2), consume_input=True)
        torch.testing.assert_close(out, expected)
        kept = x.clone()
        conv(x, styles, bias=bias, gain=math.sqrt(2))
        assert torch.equal(x, kept)  # not consumed unless asked


def test_modulated_conv_rejects_w_instead_of_styles() -> None:
    conv = ModulatedConv2d(6, 5, 3, 8)
    with pytest.raises(ValueError, match="styles must be"):
        conv(torch.randn(2, 6, 4, 4), torch.randn(2, 8))


# ------------------------------------------------------------------------------------------------
# Style space
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Generator:
    torch.manual_seed(3)
    g = Generator(**TINY).eval()
    with torch.no_grad():  # non-trivial biases / noise strengths so every term matters
        for name, p in g.named_parameters():
            torgb_bias = name.startswith("to_rgb") and name.endswith(".bias") and "mod" not in name
            if name.endswith(("noise.weight", "activate.bias")) or torgb_bias:
                p.normal_(0, 0.2)
    return g


def test_modulated_layers_table() -> None:
    with torch.device("meta"):
        for size in (64, 256, 1024):
            g = Generator(size)
            layers = g.modulated_layers()
            log_size = int(math.log2(size))
            assert len(layers) == 3 * log_size - 4  # 26 at 1024: conv1, to_rgb1, 3 a resolution
            assert [e.name for e in layers[:5]] == ["conv1", "to_rgb1", "convs.0", "convs.1",
                                                    "to_rgbs.0"]  # fmt: skip
            assert [e.resolution for e in layers] == [4, 4] + [
                2**r for r in range(3, log_size + 1) for _ in range(3)
            ]
            assert [e.kind for e in layers] == ["conv", "torgb"] + ["conv", "conv", "torgb"] * (
                log_size - 2
            )
            state = g.state_dict()
            for e in layers:
                assert e.module is g.get_submodule(e.name)
                assert f"{e.name}.conv.modulation.weight" in state
            index = g.latent_index_of_layer
            assert index["conv1"] == 0 and index["to_rgb1"] == 1
            assert index["convs.4"] == 5 and index["convs.5"] == 6 and index["to_rgbs.2"] == 7
            assert max(index.values()) == g.n_latent - 1
            assert g.style_latent_indices() == [index[e.name] for e in layers]
            if size == 1024:
                assert len(layers) == 26 and g.n_latent == 18


def test_layers_at_or_above(tiny: Generator) -> None:
    names = tiny.layers_at_or_above(32)
    assert names == ["convs.4", "convs.5", "to_rgbs.2", "convs.6", "convs.7", "to_rgbs.3"]
    assert tiny.layers_at_or_above(32, kinds=("torgb",)) == ["to_rgbs.2", "to_rgbs.3"]
    assert len(tiny.layers_at_or_above(4)) == len(tiny.modulated_layers())
    with pytest.raises(ValueError, match="unknown kinds"):
        tiny.layers_at_or_above(32, kinds=("rgb",))


def test_synthesis_from_styles_equals_forward(tiny: Generator) -> None:
    torch.manual_seed(4)
    latent = tiny.style(torch.randn(2 * tiny.n_latent, 64)).view(2, tiny.n_latent, 64)
    with torch.no_grad():
        styles = tiny.get_styles(latent)
        assert [s.shape[1] for s in styles] == [
            e.module.conv.in_channel for e in tiny.modulated_layers()
        ]
        image = tiny.synthesis_from_styles(styles)
        forward, _ = tiny([latent], input_is_latent=True, randomize_noise=False)
        torch.testing.assert_close(image, forward, atol=0, rtol=0)
        assert image.shape == (2, 3, 64, 64)


def test_one_wplus_entry_changes_only_its_layers(tiny: Generator) -> None:
    torch.manual_seed(5)
    latent = torch.randn(2, tiny.n_latent, 64)
    changed = latent.clone()
    changed[:, 3] += 1.0
    with torch.no_grad():
        before, after = tiny.get_styles(latent), tiny.get_styles(changed)
    differs = [
        e.name
        for e, s0, s1 in zip(tiny.modulated_layers(), before, after)
        if not torch.equal(s0, s1)
    ]
    # W+ index 3 drives the 8 px ToRGB and the next (16 px) up-sampling conv.
    assert differs == ["to_rgbs.0", "convs.2"]


def test_styles_from_another_generator(tiny: Generator) -> None:
    # Rendering G1 with G2's styles equals G1 whose affines were replaced by G2's.
    torch.manual_seed(6)
    other = Generator(**TINY).eval()
    latent = torch.randn(2, tiny.n_latent, 64)
    patched = Generator(**TINY).eval()
    state = tiny.state_dict()
    state |= {k: v for k, v in other.state_dict().items() if ".modulation." in k}
    patched.load_state_dict(state)
    with torch.no_grad():
        mixed = tiny.synthesis_from_styles(other.get_styles(latent))
        expected = patched.synthesis_from_styles(patched.get_styles(latent))
        own = tiny.synthesis_from_styles(tiny.get_styles(latent))
    torch.testing.assert_close(mixed, expected)
    assert (mixed - own).abs().max() > 1e-2


def test_fast_generator_matches_reference_generator(tiny: Generator) -> None:
    torch.manual_seed(7)
    z = torch.randn(3, 64)
    noise = tiny.make_noise()
    with torch.no_grad():
        fast, _ = tiny([z], noise=noise)
        tiny.set_modconv_impl("reference")
        ref, _ = tiny([z], noise=noise)
        tiny.set_modconv_impl("auto")
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_tiny_generator_backward_matches_reference() -> None:
    torch.manual_seed(8)
    g = Generator(**TINY)
    z = torch.randn(2, 64)
    noise = g.make_noise()
    target = torch.randn(2, 3, 64, 64)

    def grads(impl: str) -> dict[str, torch.Tensor]:
        g.zero_grad()
        g.set_modconv_impl(impl)
        image, _ = g([z], noise=noise)
        F.mse_loss(image, target).backward()
        return {n: p.grad.clone() for n, p in g.named_parameters()}

    fast, ref = grads("auto"), grads("reference")
    assert set(fast) == {n for n, _ in g.named_parameters()}
    for name in ref:
        assert torch.isfinite(fast[name]).all(), name
        # fp32 sums in another order (the grouped conv vs the reference's loop; AVX2 vs
        # AVX-512 kernels) differ by up to ~6e-5 on the noise/bias gradients, which are sums
        # over every pixel with cancellation
        torch.testing.assert_close(fast[name], ref[name], atol=2e-4, rtol=1e-3, msg=name)
    assert fast["convs.7.noise.weight"].abs() > 0 and fast["style.1.weight"].abs().sum() > 0


def test_generator_gradcheck_double() -> None:
    torch.manual_seed(9)
    g = Generator(8, style_dim=4, n_mlp=1, channel_max=3).double()
    latent = torch.randn(2, g.n_latent, 4, dtype=torch.float64, requires_grad=True)

    def render(wplus: torch.Tensor) -> torch.Tensor:
        return g.synthesis_from_styles(g.get_styles(wplus))

    assert torch.autograd.gradcheck(render, (latent,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_noise_modes(tiny: Generator) -> None:
    torch.manual_seed(10)
    z = torch.randn(2, 64)
    with torch.no_grad():
        stored, _ = tiny([z], randomize_noise=False)
        random1, _ = tiny([z], randomize_noise=True)
        random2, _ = tiny([z])
        given = tiny.make_noise()
        fixed1, _ = tiny([z], noise=given)
        fixed2, _ = tiny([z], noise=given)
    assert random1.shape == stored.shape == (2, 3, 64, 64)
    assert (random1 - stored).abs().max() > 1e-3 and (random1 - random2).abs().max() > 1e-3
    torch.testing.assert_close(fixed1, fixed2, atol=0, rtol=0)


def test_truncation_and_mixing(tiny: Generator) -> None:
    torch.manual_seed(11)
    z = torch.randn(3, 64)
    with torch.no_grad():
        mean = tiny.mean_latent(256)
        zero, lat = tiny([z], truncation=0.0, truncation_latent=mean, randomize_noise=False,
                         return_latents=True)  # fmt: skip
        torch.testing.assert_close(lat, mean.expand(3, tiny.n_latent, -1))
        torch.testing.assert_close(zero, zero[:1].expand_as(zero))  # psi 0: every z -> mean W
        z2 = torch.randn(3, 64)
        _, mixed = tiny([z, z2], inject_index=5, return_latents=True)
        torch.testing.assert_close(mixed[:, 4], tiny.get_latent(z))
        torch.testing.assert_close(mixed[:, 5], tiny.get_latent(z2))
    with pytest.raises(ValueError, match="truncation_latent"):
        tiny([z], truncation=0.5)


def test_bad_style_inputs_raise(tiny: Generator) -> None:
    with pytest.raises(ValueError, match="expected 14 styles"):
        tiny.synthesis_from_styles([torch.zeros(1, 32)] * 3)
    with pytest.raises(ValueError, match="latent must be"):
        tiny.get_styles(torch.zeros(1, 3, 64))


# ------------------------------------------------------------------------------------------------
# Discriminator
# ------------------------------------------------------------------------------------------------


def test_discriminator_channels_last_matches_contiguous() -> None:
    torch.manual_seed(12)
    d = Discriminator(64, channel_max=32).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        plain = d(x)
        d_cl = Discriminator(64, channel_max=32).eval()
        d_cl.load_state_dict(d.state_dict())
        d_cl = d_cl.to(memory_format=torch.channels_last)
        cl = d_cl(x.to(memory_format=torch.channels_last))
    assert plain.shape == (4, 1)
    torch.testing.assert_close(cl, plain, atol=1e-5, rtol=1e-5)


def test_discriminator_minibatch_groups_and_errors() -> None:
    torch.manual_seed(13)
    d = Discriminator(16, channel_max=8).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        full = d(x)
        # Strided groups: {0,2,4,6} and {1,3,5,7}; evaluating one group alone gives its logits.
        torch.testing.assert_close(d(x[0::2]), full[0::2], atol=1e-5, rtol=1e-5)
        assert (d(x[:4]) - full[:4]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="not divisible"):
        d(torch.randn(6, 3, 16, 16))
    with pytest.raises(ValueError, match="expected images"):
        d(torch.randn(2, 3, 32, 32))


def test_discriminator_gradcheck_double() -> None:
    torch.manual_seed(14)
    d = Discriminator(8, channel_max=3).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(d, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_blur_kernels_are_buffers() -> None:
    g, d = Generator(**TINY), Discriminator(64, channel_max=32)
    k = make_blur_kernel([1, 3, 3, 1])
    torch.testing.assert_close(g.state_dict()["convs.0.conv.blur.kernel"], k * 4)
    torch.testing.assert_close(g.state_dict()["to_rgbs.0.upsample.kernel"], k * 4)
    torch.testing.assert_close(d.state_dict()["convs.1.conv2.0.kernel"], k)
    assert k.sum() == 1 and k[0, 0] == 1 / 64


def test_weight_changes_invalidate_cached_demodulation(tiny: Generator, tmp_path) -> None:
    # With autograd off, sum(W^2) per layer is cached; in-place edits, load_state_dict and a
    # save/load round trip of the (channels_last-ordered) weights must all be seen.
    torch.manual_seed(15)
    z = torch.randn(2, 64)
    g = Generator(**TINY).eval()
    g.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        before, _ = g([z], randomize_noise=False)
        g.convs[3].conv.weight.mul_(3.0)  # demodulation cancels a uniform scale ...
        g.convs[3].conv.weight[0, :, :2].mul_(-2.0)  # ... but not a change of shape
        edited, _ = g([z], randomize_noise=False)
        g.set_modconv_impl("reference")
        edited_ref, _ = g([z], randomize_noise=False)
        g.set_modconv_impl("auto")
    assert (edited - before).abs().max() > 1e-3
    torch.testing.assert_close(edited, edited_ref, atol=1e-5, rtol=1e-5)

    torch.save(tiny.state_dict(), tmp_path / "g.pt")
    g.load_state_dict(torch.load(tmp_path / "g.pt", weights_only=True))
    with torch.no_grad():
        restored, _ = g([z], randomize_noise=False)
    torch.testing.assert_close(restored, before, atol=0, rtol=0)
    for key, value in g.state_dict().items():
        assert torch.equal(value, tiny.state_dict()[key]), key
