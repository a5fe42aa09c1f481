"""AnimeGANv2 generator: loads the public layout strictly and matches the upstream golden vectors
for square, non-square and odd inputs in both upsampling modes."""

from __future__ import annotations

import json

import pytest
import torch
from golden import check_stats as golden_stats
from golden import (
    check_stored,
    fill_state_dict,
    load_golden,
    sha256_mismatches,
    zeros_from_manifest,
)

from portrait_toon.checkpoints import load_into
from portrait_toon.nets.animegan import Generator

MANIFEST = "animegan2_generator.json"
CASES = ("sq", "ns", "odd")
MODES = {"default": True, "ac_false": False}
TOL = {"atol": 1e-4, "rtol": 1e-4}  # tests/data/golden/README.md section 4, float32 tensors
TOL_F16 = {"atol": 1e-4, "rtol": 1e-3}  # against float16-stored tensors


def check_stats(actual: torch.Tensor, golden: dict, key: str) -> None:
    golden_stats(actual, golden, key, **TOL)


def test_manifest_zero_state_dict_loads_strict(manifests_dir):
    zeros = zeros_from_manifest(manifests_dir / MANIFEST)
    net = Generator()
    assert list(net.state_dict()) == list(zeros)
    load_into(net, zeros, source=MANIFEST, expected="AnimeGANv2 generator")
    manifest = json.loads((manifests_dir / MANIFEST).read_text())
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_golden(golden_dir / "animegan2_generator.pt")


@pytest.fixture(scope="module")
def golden_weights(golden, manifests_dir):
    return fill_state_dict(manifests_dir / MANIFEST, "P", g2=golden["meta.rule_gain2"].item())


@pytest.fixture(scope="module")
def golden_net(golden_weights):
    net = Generator()
    net.load_state_dict(golden_weights, strict=True)
    return net.eval()


def test_golden_weight_rule_fingerprints(golden, golden_weights):
    assert sha256_mismatches(golden_weights, golden["weights.sha256"]) == []


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", CASES)
def test_golden_outputs(golden, golden_net, case, mode):
    x = golden[f"in.{case}"]
    with torch.no_grad():
        out = golden_net(x, align_corners=MODES[mode])
    check_stored(out, golden, f"out.{case}.{mode}", tol=TOL, f16_tol=TOL_F16)


def test_odd_size_shapes_follow_the_upsampling_mode(golden, golden_net):
    x = golden["in.odd"]
    assert tuple(x.shape[-2:]) == (97, 131)
    with torch.no_grad():
        assert golden_net(x).shape[-2:] == (97, 131)
        assert golden_net(x, align_corners=False).shape[-2:] == (96, 128)


def test_golden_block_intermediates(golden, golden_weights):
    golden_net = Generator()
    golden_net.load_state_dict(golden_weights, strict=True)
    golden_net.eval().fused_inference = False  # hooks need the module graph
    captured = {}
    names = ("block_a", "block_b", "block_c", "block_d", "block_e")
    handles = [
        getattr(golden_net, n).register_forward_hook(
            lambda m, i, o, n=n: captured.__setitem__(n, o)
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            golden_net(golden["in.sq"])
    finally:
        for h in handles:
            h.remove()
    for name in names:
        check_stats(captured[name], golden, f"inter.sq.{name}")


@pytest.mark.parametrize("mode", list(MODES))
def test_channels_last_fused_path_matches_golden(golden, golden_weights, mode):
    net = Generator()
    net.load_state_dict(golden_weights, strict=True)
    net = net.eval().to(memory_format=torch.channels_last)
    x = golden["in.odd"].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = net(x, align_corners=MODES[mode])
    check_stored(out, golden, f"out.odd.{mode}", tol=TOL, f16_tol=TOL_F16)


def test_rejects_non_rgb_input(golden_net):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        golden_net(torch.zeros(1, 4, 16, 16))


def test_module_graph_path_matches_golden(golden, golden_weights):
    net = Generator()
    net.load_state_dict(golden_weights, strict=True)
    net.eval().fused_inference = False  # the plain nn.Module graph
    with torch.no_grad():
        out = net(golden["in.odd"], align_corners=False)
    check_stored(out, golden, "out.odd.ac_false", tol=TOL, f16_tol=TOL_F16)


@pytest.mark.parametrize("size", [(35, 53), (64, 48)])
def test_fused_inference_equals_module_graph(golden_weights, size):
    memory_format = torch.channels_last  # the fused path runs for channels_last inputs
    net = Generator()
    net.load_state_dict(golden_weights, strict=True)
    net = net.eval().to(memory_format=memory_format)
    x = (torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3)) * 2 - 1).contiguous(
        memory_format=memory_format
    )
    with torch.no_grad():
        fused = net(x)
        net.fused_inference = False
        plain = net(x)
    assert fused.shape == plain.shape == (2, 3, *size)
    torch.testing.assert_close(fused, plain, **TOL)


def test_autograd_runs_the_module_graph():
    torch.manual_seed(0)
    net = Generator().train()
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    out = net(x)
    out.square().mean().backward()
    assert net.block_e[2][1].weight.grad is not None
    assert net.block_a[0][1].weight.grad.abs().sum() > 0
