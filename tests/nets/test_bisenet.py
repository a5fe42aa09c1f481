"""Face-parsing BiSeNet: strict loading of the public layout and the upstream golden vectors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from golden import check_stats as golden_stats
from golden import (
    check_stored,
    fill_state_dict,
    load_golden,
    sha256_mismatches,
    zeros_from_manifest,
)

from portrait_toon.checkpoints import load_into
from portrait_toon.nets.bisenet import BiSeNet

MANIFEST = "bisenet_faceparsing_19.json"
HEADS = ("feat_out", "feat_out16", "feat_out32")
CASES = {"main": "in.x", "nonsquare": "in.x2"}
TOL = {"atol": 1e-4, "rtol": 1e-4}  # tests/data/golden/README.md section 4, BiSeNet


def check_stats(actual: torch.Tensor, golden: dict, key: str) -> None:
    golden_stats(actual, golden, key, **TOL)


def test_manifest_zero_state_dict_loads_strict(manifests_dir):
    zeros = zeros_from_manifest(manifests_dir / MANIFEST)
    net = BiSeNet(n_classes=19)
    assert list(net.state_dict()) == list(zeros)  # same keys in the same order
    load_into(net, zeros, source=MANIFEST, expected="face-parsing BiSeNet 19 classes")
    assert all(bool((v == 0).all()) for v in net.state_dict().values())
    manifest = json.loads((manifests_dir / MANIFEST).read_text())
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_golden(golden_dir / "bisenet_faceparsing_19.pt")


@pytest.fixture(scope="module")
def golden_weights(golden, manifests_dir):
    state = fill_state_dict(manifests_dir / MANIFEST, "P", g2=golden["meta.rule_gain2"].item())
    return state


@pytest.fixture(scope="module")
def golden_net(golden_weights):
    net = BiSeNet(19)
    net.load_state_dict(golden_weights, strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def golden_run(golden, golden_net):
    """Every golden case once: final outputs, low-res head outputs and main-case intermediates."""
    net = golden_net
    captured: dict[str, object] = {}

    def keep(name):
        return lambda module, inputs, output: captured.__setitem__(name, output)

    modules = {
        "resnet": net.cp.resnet,
        "cp": net.cp,
        "conv_avg": net.cp.conv_avg,
        "arm32.atten": net.cp.arm32.sigmoid_atten,
        "arm16.atten": net.cp.arm16.sigmoid_atten,
        "ffm.atten": net.ffm.sigmoid,
        "ffm": net.ffm,
        **{f"{head}.lowres": getattr(net, head.replace("feat_", "conv_")) for head in HEADS},
    }
    handles = [m.register_forward_hook(keep(name)) for name, m in modules.items()]
    results = {}
    try:
        with torch.no_grad():
            for case, key in CASES.items():
                captured.clear()
                outs = net(golden[key])
                results[case] = {"outs": dict(zip(HEADS, outs)), **captured}
    finally:
        for handle in handles:
            handle.remove()
    return results


def test_golden_weight_rule_fingerprints(golden, golden_weights):
    assert sha256_mismatches(golden_weights, golden["weights.sha256"]) == []


@pytest.mark.parametrize("case", list(CASES))
def test_golden_head_outputs(golden, golden_run, case):
    run = golden_run[case]
    for head in HEADS:
        lowres = run[f"{head}.lowres"]
        check_stored(lowres, golden, f"out.{case}.{head}.lowres", tol=TOL, f16_tol=TOL)
        final = run["outs"][head]
        check_stats(final, golden, f"out.{case}.{head}")
        # the final output is the low-res head upsampled bilinearly with align_corners=True
        size = golden[CASES[case]].shape[-2:]
        recon = F.interpolate(lowres, size=size, mode="bilinear", align_corners=True)
        assert torch.equal(final, recon)


@pytest.mark.parametrize("case", list(CASES))
def test_golden_argmax_exact_outside_ambiguous_pixels(golden, golden_run, case):
    labels = golden_run[case]["outs"]["feat_out"].argmax(1)[0].flatten()
    expected = golden[f"out.{case}.argmax"].flatten().long()
    keep = torch.ones_like(labels, dtype=torch.bool)
    keep[golden[f"out.{case}.argmax_ambiguous_flat_idx"].long()] = False
    assert int(keep.sum()) > 0.99 * labels.numel()
    assert torch.equal(labels[keep], expected[keep])


def test_golden_intermediates_main(golden, golden_run):
    run = golden_run["main"]
    for name, feat in zip(("feat8", "feat16", "feat32"), run["resnet"]):
        check_stats(feat, golden, f"inter.main.cp.resnet.{name}")
    cp_names = ("out0_feat_res8", "out1_feat_cp8", "out2_feat_cp16")
    for name, feat in zip(cp_names, run["cp"]):
        check_stats(feat, golden, f"inter.main.cp.{name}")
    check_stats(run["ffm"], golden, "inter.main.ffm")
    torch.testing.assert_close(run["conv_avg"], golden["inter.main.cp.conv_avg"], **TOL)
    for name in ("arm32.atten", "arm16.atten"):
        torch.testing.assert_close(run[name], golden[f"inter.main.cp.{name}"], **TOL)
    torch.testing.assert_close(run["ffm.atten"], golden["inter.main.ffm.atten"], **TOL)


def test_fold_bn_matches_and_keeps_state_dict(golden, golden_weights):
    net = BiSeNet(19)
    net.load_state_dict(golden_weights, strict=True)
    x = golden["in.x2"]  # non-square: also exercises the legacy nearest resizes
    keys_before = list(net.state_dict())
    net.fold_bn()
    assert not net.training
    assert list(net.state_dict()) == keys_before  # folded copies are not persistent
    assert all(torch.equal(net.state_dict()[k], golden_weights[k]) for k in keys_before)
    assert net.cp.resnet.conv1.folded_weight is not None
    with torch.no_grad():
        lowres = net.main_logits_lowres(x)
    check_stored(lowres, golden, "out.nonsquare.feat_out.lowres", tol=TOL, f16_tol=TOL)

    # loading new weights refolds them; train() drops the folded copies
    changed = {k: (v * 0.5 if v.is_floating_point() else v) for k, v in golden_weights.items()}
    old_folded = net.cp.resnet.conv1.folded_weight.clone()
    net.load_state_dict(changed, strict=True)
    assert not torch.allclose(net.cp.resnet.conv1.folded_weight, old_folded)
    net.train()
    assert net.cp.resnet.conv1.folded_weight is None


def test_channels_last_matches_golden(golden, golden_net):
    net = BiSeNet(19)
    net.load_state_dict(golden_net.state_dict(), strict=True)
    net = net.eval().fold_bn().to(memory_format=torch.channels_last)
    x = golden["in.x2"].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, _, out32 = net(x)
    check_stats(out, golden, "out.nonsquare.feat_out")
    check_stats(out32, golden, "out.nonsquare.feat_out32")


def test_train_mode_returns_three_outputs_at_input_size_with_gradients():
    torch.manual_seed(0)
    net = BiSeNet(n_classes=5).train()
    x = torch.randn(2, 3, 64, 96)
    outs = net(x)
    assert len(outs) == 3
    assert all(o.shape == (2, 5, 64, 96) for o in outs)
    sum(o.square().mean() for o in outs).backward()
    assert net.cp.resnet.conv1.weight.grad is not None
    assert net.conv_out32.conv_out.weight.grad.abs().sum() > 0


def test_parse_applies_imagenet_preprocessing_and_returns_input_size_labels(golden_net):
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    labels = golden_net.parse(images, size=None)
    assert labels.shape == (2, 40, 56) and labels.dtype == torch.int64
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = golden_net(((images + 1) / 2 - mean) / std)[0]
    assert torch.equal(labels, logits.argmax(1))
    assert not torch.equal(labels, golden_net(images)[0].argmax(1))  # normalisation matters

    resized = golden_net.parse(images, size=64)  # through a 64x64 working size and back
    assert resized.shape == (2, 40, 56)
    assert int(resized.min()) >= 0 and int(resized.max()) < 19
