"""The stylizer file format and its safety: round trips, Lightning checkpoints (their EMA),
hostile pickles, the allow-list of network classes, clear errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from toy_nets import photo, tiny_unet

from portrait_toon.data.images import to_tensor
from portrait_toon.inference.stylizer import Stylizer
from portrait_toon.nets.unet import UNet
from portrait_toon.utils import generator_file
from portrait_toon.utils.generator_file import (
    GENERATOR_FORMAT,
    StylizerLoadError,
    load_stylizer,
    net_target,
    save_stylizer,
)


@pytest.fixture(scope="module")
def net() -> UNet:
    return tiny_unet()


@pytest.fixture
def exported(tmp_path: Path, net: UNet) -> Path:
    return save_stylizer(tmp_path / "run" / "stylizer.pt", net, meta={"step": 7})


# -------------------------------------------------------------------------- stylizer files


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_round_trip(tmp_path: Path, net: UNet, suffix: str) -> None:
    path = save_stylizer(tmp_path / f"stylizer{suffix}", net)
    loaded = load_stylizer(path, "cpu")
    assert isinstance(loaded, UNet) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == net.config
    x = to_tensor(photo(40, 56))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"stylizer{suffix}"]  # atomic write


def test_export_file_is_plain_and_weights_only(exported: Path) -> None:
    content = torch.load(exported, weights_only=True)
    assert content["format"] == "portrait_toon.generator/1"
    assert content["target"] == "portrait_toon.nets.unet.UNet"
    assert content["config"]["base_channels"] == 8 and content["meta"]["step"] == 7


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_net_without_a_config_dict_round_trips(tmp_path: Path, suffix: str) -> None:
    """AnimeGAN's generator (a fixed architecture, no `config`) exports with an empty config."""
    from portrait_toon.nets.animegan import Generator

    torch.manual_seed(0)
    net = Generator().eval()
    loaded = load_stylizer(save_stylizer(tmp_path / f"animegan{suffix}", net))
    x = to_tensor(photo(32, 48))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:.*treespec")
@pytest.mark.filterwarnings("ignore:Found .* in eval mode")  # the EMA copy, by design
def test_lightning_checkpoint_of_the_training_module_loads_ema(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from portrait_toon.training.stylizer import StylizerModule

    module = StylizerModule(
        net=tiny_unet(seed=1).train(),
        loss={"perceptual": {"kind": "none"}, "adv": {"kind": "none"}},
        ema_decay=0.5,
    )
    pairs = [{"src": torch.rand(2, 3, 32, 32) * 2 - 1, "tgt": torch.rand(2, 3, 32, 32) * 2 - 1}]
    loader = torch.utils.data.DataLoader(pairs * 2, batch_size=None)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    loaded = load_stylizer(path)  # weights_only=True on Lightning's own file
    x = to_tensor(photo(32, 48))
    with torch.no_grad():
        # the module runs channels_last, the loaded net NCHW: other kernels, same function
        torch.testing.assert_close(loaded(x), module.net_ema.module(x), rtol=0, atol=1e-5)
        assert not torch.allclose(loaded(x), module.net(x))  # the EMA, not the raw net

    # The API takes the .ckpt, or the folder that holds it (no stylizer.pt there).
    for given in (path, tmp_path):
        stylizer = Stylizer.load(given, device="cpu")
        assert stylizer.info["source"] == str(path) and stylizer.info["steps"] == 2
        torch.testing.assert_close(stylizer(x), loaded(x), rtol=0, atol=1e-6)


def test_lightning_checkpoint_without_record_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": tiny_unet().state_dict()}, path)
    with pytest.raises(StylizerLoadError, match="does not record how to build.*stylizer.pt"):
        load_stylizer(path)


class Payload:
    """Unpickling this would create a folder: the side effect a hostile file would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_hostile_pickle_is_refused_without_running_it(tmp_path: Path, net: UNet) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "stylizer.pt"
    record = {"format": GENERATOR_FORMAT, "target": net_target(net), "config": net.config}
    torch.save({**record, "state_dict": net.state_dict(), "meta": Payload(marker)}, path)
    with pytest.raises(StylizerLoadError, match="stylizer.pt.*refused"):
        load_stylizer(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("os.system", "outside the allowed packages"),
        ("torch.nn.Conv2d", "outside the allowed packages"),
        ("portrait_toon.nets.unet.F", "not a network class"),  # a module imported there
        ("portrait_toon.nets.unet.nn.Module", "cannot be imported"),
        ("portrait_toon.nets.nowhere.Net", "cannot be imported"),
        ("UNet; import os", "not a dotted class name"),
    ],
)
def test_only_project_nets_can_be_named(
    tmp_path: Path, net: UNet, target: str, message: str
) -> None:
    path = tmp_path / "stylizer.pt"
    record = {"format": GENERATOR_FORMAT, "target": target, "config": net.config}
    torch.save({**record, "state_dict": net.state_dict()}, path)
    with pytest.raises(StylizerLoadError, match=message):
        load_stylizer(path)


class StandIn(nn.Module):
    """A network defined outside portrait_toon.nets (only loadable once allow-listed)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.config = {"channels": channels}
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


def test_allow_list_is_the_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StylizerLoadError, match="outside the allowed packages"):
        save_stylizer(tmp_path / "s.pt", StandIn())  # refused at save time already
    monkeypatch.setattr(generator_file, "ALLOWED_NET_PACKAGES", ("portrait_toon.nets", __name__))
    path = save_stylizer(tmp_path / "s.pt", StandIn())
    loaded = load_stylizer(path)
    assert isinstance(loaded, StandIn)
    assert Stylizer(loaded)(photo(13, 21)).shape == (13, 21, 3)  # no pad_multiple: 32


def test_bad_files_give_clear_errors(tmp_path: Path, net: UNet) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pt.*ckpt=PATH"):
        load_stylizer(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(StylizerLoadError, match="garbage.pt"):
        load_stylizer(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    with pytest.raises(StylizerLoadError, match="bare.pt: neither a portrait_toon generator"):
        load_stylizer(bare)
    wrong_shape = tmp_path / "wrong.pt"
    record = {"format": GENERATOR_FORMAT, "target": net_target(net)}
    record["config"] = {**net.config, "base_channels": 16}
    torch.save({**record, "state_dict": net.state_dict()}, wrong_shape)
    with pytest.raises(StylizerLoadError, match="wrong.pt.*does not fit"):
        load_stylizer(wrong_shape)
    with pytest.raises(ValueError, match="config.norm holds a object"):
        save_stylizer(tmp_path / "x.pt", net, {**net.config, "norm": object()})
