"""torchvision-layout VGG16/VGG19: strict loading of the public layout, golden ReLU taps, features
and logits, and the early-stopping feature extractor."""

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
from portrait_toon.nets.vgg import VGG, VGGFeatures, vgg16, vgg19

ARCHS = {"vgg19": vgg19, "vgg16": vgg16}
TAPS = {
    "vgg19": ("relu1_2", "relu2_2", "relu3_3", "relu3_4", "relu4_4", "relu5_4"),
    "vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
}
TOL = {"atol": 2e-4, "rtol": 1e-4}  # tests/data/golden/README.md section 4, VGG
TOL_F16 = {"atol": 1e-4, "rtol": 1e-3}


def check_stats(actual: torch.Tensor, golden: dict, key: str) -> None:
    golden_stats(actual, golden, key, **TOL)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_manifest_zero_state_dict_loads_strict(manifests_dir, arch):
    path = manifests_dir / f"{arch}_torchvision.json"
    zeros = zeros_from_manifest(path)
    net = ARCHS[arch]()
    assert list(net.state_dict()) == list(zeros)
    load_into(net, zeros, source=path.name, expected=f"torchvision {arch}")
    manifest = json.loads(path.read_text())
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]
    names = {str(i): name for name, i in net.layer_index.items()}
    assert names == manifest["features_index_to_layer"]


@pytest.fixture(scope="module", params=list(ARCHS))
def golden_case(request, golden_dir, manifests_dir):
    arch = request.param
    golden = load_golden(golden_dir / f"{arch}_torchvision.pt")
    weights = fill_state_dict(
        manifests_dir / f"{arch}_torchvision.json", "P", g2=golden["meta.rule_gain2"].item()
    )
    net = ARCHS[arch]()
    net.load_state_dict(weights, strict=True)
    return arch, golden, weights, net.eval()


def test_golden_weight_rule_fingerprints(golden_case):
    _, golden, weights, _ = golden_case
    assert sha256_mismatches(weights, golden["weights.sha256"]) == []


def test_golden_taps_features_and_logits(golden_case):
    arch, golden, _, net = golden_case
    x = golden["in.x"]
    with torch.no_grad():
        taps = net.features_at(x, TAPS[arch])
        features = net.features(x)
        logits = net(x)
    assert list(taps) == list(TAPS[arch])
    for name, value in taps.items():
        check_stored(value, golden, f"out.{name}", tol=TOL, f16_tol=TOL_F16)
    check_stats(features, golden, "out.features_out")
    torch.testing.assert_close(features, golden["out.features_out"], **TOL)
    torch.testing.assert_close(logits, golden["out.logits"], **TOL)


def test_feature_extractor_stops_at_deepest_tap_and_matches_golden(golden_case):
    _, golden, _, net = golden_case
    extractor = VGGFeatures(net, taps=("relu2_2", "relu1_2"))
    # only features.0..8 are kept (relu2_2 = index 8), and they are the VGG's own modules
    assert len(extractor.features) == 9
    assert extractor.features[7] is net.features[7]
    expected_keys = {f"features.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")}
    assert set(extractor.state_dict()) == expected_keys
    calls = []
    hook = net.features[9].register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            out = extractor(golden["in.x"])
    finally:
        hook.remove()
    assert calls == []  # nothing past the deepest tap ran
    assert list(out) == ["relu2_2", "relu1_2"]
    check_stats(out["relu1_2"], golden, "out.relu1_2")
    check_stats(out["relu2_2"], golden, "out.relu2_2")


def test_conv_tap_is_not_overwritten_by_inplace_relu():
    torch.manual_seed(0)
    net = vgg16().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        taps = net.features_at(x, ("conv1_1", "relu1_1"))
        conv = torch.nn.functional.conv2d(
            x, net.features[0].weight, net.features[0].bias, padding=1
        )
    assert (taps["conv1_1"] < 0).any()  # pre-activation values survived the in-place ReLU
    torch.testing.assert_close(taps["conv1_1"], conv)
    torch.testing.assert_close(taps["relu1_1"], conv.clamp_min(0))


def test_imagenet_normalisation_only_when_asked():
    torch.manual_seed(0)
    net = vgg16().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    raw = VGGFeatures(net, taps=("relu1_2",))
    normed = VGGFeatures(net, taps=("relu1_2",), imagenet_normalize=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(raw(x)["relu1_2"], net.features_at(x, ["relu1_2"])["relu1_2"])
        expected = net.features_at(((x + 1) / 2 - mean) / std, ["relu1_2"])["relu1_2"]
        torch.testing.assert_close(normed(x)["relu1_2"], expected, atol=1e-5, rtol=1e-5)


def test_default_taps_and_gradients_flow():
    torch.manual_seed(0)
    net = vgg19()
    extractor = VGGFeatures(net)
    assert extractor.taps == ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
    assert vgg16().default_taps == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    sum(t.mean() for t in extractor(x).values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_tap_is_a_clear_error():
    with pytest.raises(ValueError, match="relu9_9"):
        VGGFeatures(VGG([8, "M"]), taps=("relu9_9",))
