"""The light U-Net F: any size in, same size out, identity at start, trainable, and light."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from portrait_toon.nets.unet import ColorLUT, UNet


def tiny(**kwargs) -> UNet:
    config = {"base_channels": 8, "depth": 3, "channel_mult": (1, 2, 4), "bottleneck_blocks": 1}
    return UNet(**{**config, **kwargs})


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 17), (5, 7), (1, 1)])
def test_any_size_returns_same_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = tiny(residual=False)
    x = torch.rand(2, 3, *size) * 2 - 1
    y = net(x)
    assert y.shape == x.shape
    assert bool(torch.isfinite(y).all())
    assert y.abs().max() < 1  # tanh output


def test_default_config_on_odd_size() -> None:
    x = torch.rand(1, 3, 97, 131) * 2 - 1
    with torch.no_grad():
        assert UNet()(x).shape == (1, 3, 97, 131)


def test_residual_net_starts_as_identity() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 24) * 1.8 - 0.9
    torch.testing.assert_close(tiny()(x), x, atol=1e-5, rtol=0)


def test_residual_output_is_clamped_but_keeps_gradients() -> None:
    net = tiny()
    with torch.no_grad():
        net.head.bias.fill_(5.0)  # push every pixel far above 1
    x = torch.zeros(1, 3, 16, 16, requires_grad=True)
    y = net(x)
    assert torch.equal(y, torch.ones_like(y))
    y.sum().backward()
    # straight-through: saturated pixels still pass gradient back (no dead zone)
    assert net.head.bias.grad is not None and net.head.bias.grad.abs().sum() > 0


def test_gradients_reach_every_parameter_after_a_few_steps() -> None:
    # The zero head (identity start) blocks gradients to earlier layers only until the first
    # update; after a few steps every parameter must receive a gradient.
    torch.manual_seed(0)
    net = tiny()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    target = (x * 0.5).flip(-1)
    for _ in range(3):
        optimizer.zero_grad()
        (net(x) - target).abs().mean().backward()
        optimizer.step()
    optimizer.zero_grad()
    (net(x) - target).abs().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad


def test_input_receives_gradient() -> None:
    net = tiny(residual=False)
    x = (torch.rand(1, 3, 24, 40) * 2 - 1).requires_grad_(True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_transposed_convolutions() -> None:
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in UNet().modules())


def test_config_rebuilds_the_same_architecture() -> None:
    net = tiny(norm="group", upsample="nearest", stem_stride=1)
    rebuilt = UNet(**net.config)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert net.pad_multiple == 4  # stem 1, three levels: two stride-2 downsamplings


@pytest.mark.parametrize("norm", ["group", "instance", "none"])
def test_normalised_variants_run(norm: str) -> None:
    net = tiny(norm=norm)
    x = torch.rand(1, 3, 30, 30) * 2 - 1
    assert net(x).shape == x.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 3, "channel_mult": (1, 2)}, "depth=3 must equal len"),
        ({"norm": "layer"}, "norm='layer'"),
        ({"stem_stride": 4}, "stem_stride=4"),
        ({"out_channels": 1}, "residual=True needs"),
        ({"upsample": "transposed"}, "upsample='transposed'"),
        ({"color_lut": 1}, "color_lut=1"),
        ({"color_lut": 9, "residual": False, "out_channels": 1}, "color_lut needs"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_default_is_light() -> None:
    # docs/design.md §5: F must cost at most half of AnimeGANv2 (210 GFLOP at 512^2). FLOPs scale
    # with the pixel count, so count at 128^2 and scale by 16.
    net = UNet().eval()
    x = torch.zeros(1, 3, 128, 128)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    gflop_512 = counter.get_total_flops() * 16 / 1e9
    assert 10 < gflop_512 < 80


# ------------------------------------------------------------------------ colour look-up table


def test_color_lut_starts_as_identity_and_keeps_any_size() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 37, 23) * 2 - 1
    torch.testing.assert_close(ColorLUT(17)(x), x, atol=1e-5, rtol=0)
    net = tiny(color_lut=9)
    assert net(x).is_contiguous()
    torch.testing.assert_close(net(x), x, atol=1e-5, rtol=0)
    assert net.config["color_lut"] == 9 and UNet(**net.config).color_lut.size == 9
    # channels_last nets (the training default) convert the table too, give the same output and
    # return it channels_last (what a discriminator after F expects)
    fast = net.to(memory_format=torch.channels_last)
    out = fast(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_color_lut_matches_trilinear_interpolation_of_its_nodes() -> None:
    torch.manual_seed(0)
    lut = ColorLUT(5)
    with torch.no_grad():
        lut.table.normal_()
    # nodes sit at -1, -0.5, 0, 0.5, 1: a query on a node returns that node's colour
    table = lut.table  # [3, blue, green, red]
    on_node = torch.tensor([-0.5, 0.0, 1.0]).view(1, 3, 1, 1)  # r, g, b
    torch.testing.assert_close(lut(on_node)[0, :, 0, 0], table[:, 4, 2, 1])
    # half-way between two red nodes: the mean of both
    between = torch.tensor([-0.25, 0.0, 1.0]).view(1, 3, 1, 1)
    expected = 0.5 * (table[:, 4, 2, 1] + table[:, 4, 2, 2])
    torch.testing.assert_close(lut(between)[0, :, 0, 0], expected)


def test_color_lut_updates_only_nodes_near_the_seen_colours() -> None:
    lut = ColorLUT(9)
    colours = torch.full((1, 3, 4, 4), -0.9)  # one dark grey, between the first two nodes
    (lut(colours) - 1.0).abs().mean().backward()
    touched = lut.table.grad.abs().sum(0) > 0  # [blue, green, red]
    assert touched[:2, :2, :2].all() and int(touched.sum()) == 8


def test_color_lut_learns_posterization_quickly() -> None:
    # The toon filter's bands: a staircase of brightness. A LUT alone fits it in 200 steps.
    torch.manual_seed(0)
    grey = torch.rand(4096).view(1, 1, 64, 64) * 2 - 1
    x = grey.expand(1, 3, 64, 64)
    target = (torch.round(x * 4) / 4).clamp(-1, 1)
    lut = ColorLUT(33)
    optimizer = torch.optim.Adam(lut.parameters(), lr=1e-2)
    before = (lut(x) - target).abs().mean().item()
    for _ in range(200):
        optimizer.zero_grad()
        (lut(x) - target).abs().mean().backward()
        optimizer.step()
    after = (lut(x) - target).abs().mean().item()
    assert after < 0.25 * before
