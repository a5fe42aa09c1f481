"""StylizerModule: manual G/D optimisation learns, global_step counts batches, the GAN switches
on after its warm-up, a checkpoint resumes to the same next-step losses, and F_ema exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from portrait_toon.nets.patchgan import MultiScalePatchGAN
from portrait_toon.nets.unet import UNet
from portrait_toon.training.stylizer import CosineSchedule, StylizerModule
from portrait_toon.utils.generator_file import StylizerLoadError, load_stylizer

SIZE = 32


class FixedPairs(Dataset):
    """Random sources and a fixed colour/contrast mapping as targets (a learnable 'style')."""

    def __init__(self, count: int = 12) -> None:
        generator = torch.Generator().manual_seed(0)
        coarse = torch.rand(count, 3, SIZE // 4, SIZE // 4, generator=generator) * 2 - 1
        self.src = nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")
        self.tgt = (0.6 * self.src.flip(1) + 0.25).clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"src": self.src[index], "tgt": self.tgt[index], "index": torch.tensor(index)}


class FixedPairsData(pl.LightningDataModule):
    def __init__(self, count: int = 12, batch_size: int = 4) -> None:
        super().__init__()
        self.dataset = FixedPairs(count)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


class RecordLosses(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.steps.append({k: float(v) for k, v in metrics.items() if k.startswith("train/")})


def tiny_module(adv_warmup: int = 2, scheduler: str = "cosine") -> StylizerModule:
    torch.manual_seed(0)
    net = UNet(base_channels=8, depth=3, channel_mult=(1, 2, 4), bottleneck_blocks=1)
    discriminator = MultiScalePatchGAN(base_channels=8, num_scales=2, n_layers=2)
    return StylizerModule(
        net=net,
        discriminator=discriminator,
        loss={
            "l1": 1.0,
            "perceptual": {"kind": "none"},
            "adv": {"kind": "hinge", "weight": 0.05, "warmup_steps": adv_warmup},
        },
        optim={"lr": 2e-3, "scheduler": scheduler, "total_steps": 20, "grad_clip": 1.0},
        ema_decay=0.9,
    )


def trainer(max_steps: int, root: Path, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
    )


def mean_l1(net: nn.Module, data: FixedPairs) -> float:
    with torch.no_grad():
        return float((net(data.src) - data.tgt).abs().mean())


def test_training_reduces_l1_and_switches_gan_on(tmp_path: Path) -> None:
    module = tiny_module(adv_warmup=4, scheduler="none")
    data = FixedPairsData()
    before = mean_l1(module.net, data.dataset)
    record = RecordLosses()
    fit = trainer(24, tmp_path, [record])
    fit.fit(module, datamodule=data)
    assert fit.global_step == 24  # the D steps do not count: max_steps means batches
    assert mean_l1(module.net, data.dataset) < 0.6 * before
    assert mean_l1(module.net_ema, data.dataset) < before
    assert all("train/d_loss" not in step for step in record.steps[:4])
    assert all("train/d_loss" in step and "train/g_adv" in step for step in record.steps[4:])
    assert int(module.net_ema.num_updates) == 24
    d_state = fit.optimizers[1].state
    assert all(int(s["step"]) == 20 for s in d_state.values())  # D stepped after warm-up only


def test_checkpoint_resumes_to_the_same_losses(tmp_path: Path) -> None:
    # One batch per epoch: this tests the module's state (F, D, EMA, optimisers, schedulers,
    # step). The position in an endless pair stream is the datamodule's own state_dict.
    total, split = 4, 2
    record_full = RecordLosses()
    full = tiny_module(adv_warmup=1)  # D has optimiser state before the split
    trainer(total, tmp_path / "full", [record_full]).fit(full, datamodule=FixedPairsData(4))

    first = tiny_module(adv_warmup=1)
    first_trainer = trainer(split, tmp_path / "first")
    first_trainer.fit(first, datamodule=FixedPairsData(4))
    checkpoint = tmp_path / "split.ckpt"
    first_trainer.save_checkpoint(checkpoint)

    record_resumed = RecordLosses()
    resumed = tiny_module(adv_warmup=1)
    resumed_trainer = trainer(total, tmp_path / "resumed", [record_resumed])
    resumed_trainer.fit(resumed, datamodule=FixedPairsData(4), ckpt_path=checkpoint)

    assert resumed_trainer.global_step == total
    assert len(record_resumed.steps) == total - split
    for expected, got in zip(record_full.steps[split:], record_resumed.steps):
        assert expected.keys() == got.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    # The checkpoint holds everything and reads without unpickling arbitrary objects.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    keys = state["state_dict"].keys()
    for prefix in ("net.", "discriminator.", "net_ema.module.", "net_ema.num_updates"):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert len(state["optimizer_states"]) == 2 and len(state["lr_schedulers"]) == 2
    assert state["stylizer"]["net_target"] == "portrait_toon.nets.unet.UNet"


def test_export_and_reload_stylizer(tmp_path: Path) -> None:
    module = tiny_module()
    trainer(3, tmp_path).fit(module, datamodule=FixedPairsData())
    path = module.export_generator(tmp_path / "stylizer.pt")
    net = load_stylizer(path)
    x = FixedPairs().src[:2]
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net_ema(x))
        assert not torch.allclose(net(x), module.net(x))  # it is the EMA, not the raw F
    assert path.stat().st_size < 2_000_000  # F alone, no discriminator or optimiser state


def test_load_generator_from_training_checkpoint(tmp_path: Path) -> None:
    module = tiny_module()
    fit = trainer(2, tmp_path)
    fit.fit(module, datamodule=FixedPairsData())
    fit.save_checkpoint(tmp_path / "last.ckpt")
    net = load_stylizer(tmp_path / "last.ckpt")
    x = FixedPairs().src[:1]
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net_ema(x))


def test_generator_file_refuses_foreign_targets(tmp_path: Path) -> None:
    payload = {
        "format": "portrait_toon.generator/1",
        "target": "os.system",
        "config": {},
        "state_dict": {},
        "meta": {},
    }
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(StylizerLoadError, match="outside the allowed packages"):
        load_stylizer(tmp_path / "evil.pt")


def test_cosine_schedule() -> None:
    schedule = CosineSchedule(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.5)
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx(0.1)
    late = CosineSchedule(total_steps=10, offset=4)
    assert late(0) == pytest.approx(CosineSchedule(total_steps=10)(4))


def test_bad_configuration_errors() -> None:
    with pytest.raises(ValueError, match="no discriminator"):
        StylizerModule(net=UNet(base_channels=4), loss={"adv": {"weight": 0.1}})
    with pytest.raises(ValueError, match=r"optim config: unknown keys \['learning_rate'\]"):
        StylizerModule(
            net=UNet(base_channels=4), loss={"adv": {"weight": 0}}, optim={"learning_rate": 1}
        )


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
def test_memory_layout_of_nets_and_batches(tmp_path: Path, channels_last: bool) -> None:
    torch.manual_seed(0)
    module = StylizerModule(
        net=UNet(base_channels=8, depth=3, channel_mult=(1, 2, 4), color_lut=5),
        discriminator=MultiScalePatchGAN(base_channels=8, num_scales=2, n_layers=2),
        loss={
            "l1": 1.0,
            "perceptual": {"kind": "none"},
            "adv": {"kind": "hinge", "warmup_steps": 0},
        },
        channels_last=channels_last,
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for network in (module.net, module.net_ema.module, module.discriminator):
        weights = [p for p in network.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=layout) for p in weights)
    seen: dict[str, bool] = {}

    def record(name: str):
        def hook(_module, inputs) -> None:
            seen.setdefault(name, inputs[0].is_contiguous(memory_format=layout))

        return hook

    module.net.encoder[0][0].register_forward_pre_hook(record("F"))
    first_d_conv = next(m for m in module.discriminator.modules() if isinstance(m, nn.Conv2d))
    first_d_conv.register_forward_pre_hook(record("D"))
    trainer(1, tmp_path).fit(module, datamodule=FixedPairsData())
    assert seen == {"F": True, "D": True}
