"""Few-shot StyleGAN2 fine-tuning (G_t): DiffAugment, the ADA controller, and the Lightning
module on a tiny generator with the embedded world's character faces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from portrait_toon.checkpoints import (
    CheckpointMismatchError,
    MissingWeightsError,
    load_into,
    load_stylegan2_checkpoint,
)
from portrait_toon.data.faces import FaceFolderDataModule
from portrait_toon.data.images import read_image
from portrait_toon.nets.stylegan2 import Discriminator, Generator
from portrait_toon.training.diffaugment import (
    AdaptiveAugmentProbability,
    DiffAugment,
    cutout_mask,
    translate,
)
from portrait_toon.training.gan_finetune import StyleGANFinetuneModule, make_pair_grid
from portrait_toon.utils.grid import tensor_to_uint8


# ---------------------------------------------------------------------------------------------
# DiffAugment
def _images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_diffaugment_applies_each_samples_own_op_consistently_across_the_batch() -> None:
    augment = DiffAugment("color,translation,cutout")
    images = _images(6)
    params = augment.sample_params(6, (16, 16), p=1.0, generator=torch.Generator().manual_seed(3))
    batched = augment.apply(images, params)
    for i in range(6):
        alone = augment.apply(images[i : i + 1], params.select(i))
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-6)
    # the same parameters on another batch give the same geometric op: translation + cutout of
    # a constant image is a mask that must be identical for every channel and for both inputs
    geometric = DiffAugment("translation,cutout")
    ones = geometric.apply(torch.ones(6, 3, 16, 16), params)
    twos = geometric.apply(torch.full((6, 3, 16, 16), 2.0), params)
    torch.testing.assert_close(twos, 2 * ones)
    assert torch.equal(ones[:, 0], ones[:, 1]) and torch.equal(ones[:, 1], ones[:, 2])
    # every sample got a different draw (per-sample randomness, not one op for the batch)
    assert len({tuple(t.tolist()) for t in params.translation}) > 1
    assert params.brightness.unique().numel() == 6


def test_translation_is_an_exact_integer_shift_with_zero_fill() -> None:
    images = _images(2, 8)
    shifted = translate(images, torch.tensor([[2, -3], [0, 1]]))
    # sample 0: down 2, left 3
    torch.testing.assert_close(shifted[0, :, 2:, :5], images[0, :, :6, 3:], rtol=0, atol=0)
    assert shifted[0, :, :2].abs().sum() == 0 and shifted[0, :, :, 5:].abs().sum() == 0
    # sample 1: right 1
    torch.testing.assert_close(shifted[1, :, :, 1:], images[1, :, :, :7], rtol=0, atol=0)
    assert shifted[1, :, :, 0].abs().sum() == 0


def test_cutout_zeroes_one_square_of_the_configured_size_in_every_channel() -> None:
    augment = DiffAugment("cutout", cutout_ratio=0.5)
    params = augment.sample_params(32, (16, 16), generator=torch.Generator().manual_seed(1))
    mask = cutout_mask(params)
    assert mask.shape == (32, 1, 16, 16)
    out = augment.apply(torch.ones(32, 3, 16, 16), params)
    for i in range(32):
        cy, cx = params.cutout_center[i].tolist()
        rows = range(max(0, cy - 4), min(16, cy + 4))
        cols = range(max(0, cx - 4), min(16, cx + 4))
        expected = torch.ones(16, 16)
        expected[rows.start : rows.stop, cols.start : cols.stop] = 0
        for channel in range(3):
            assert torch.equal(out[i, channel], expected)


def test_probability_zero_is_identity_and_p_controls_the_fraction_augmented() -> None:
    augment = DiffAugment()
    images = _images(8)
    assert torch.equal(augment(images, p=0.0), images)
    params = augment.sample_params(
        4000, (16, 16), p=0.5, generator=torch.Generator().manual_seed(0)
    )
    fraction_colour = (params.brightness != 0).float().mean().item()
    fraction_cutout = params.cutout_on.float().mean().item()
    assert 0.45 < fraction_colour < 0.55 and 0.45 < fraction_cutout < 0.55
    everything = augment.sample_params(64, (16, 16), p=1.0, generator=torch.Generator())
    assert bool(everything.cutout_on.all()) and bool((everything.saturation != 1).all())


def test_diffaugment_is_seeded_and_differentiable() -> None:
    augment = DiffAugment()
    images = _images(3)
    first = augment(images, generator=torch.Generator().manual_seed(7))
    again = augment(images, generator=torch.Generator().manual_seed(7))
    other = augment(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)

    params = augment.sample_params(2, (6, 6), generator=torch.Generator().manual_seed(2))
    x = (torch.rand(2, 3, 6, 6, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: augment.apply(t, params), (x,))
    # gradient reaches the input through all three ops (pixels not cut/shifted out)
    augment.apply(x, params).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_policy_op_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        DiffAugment("color,rotate")


# ---------------------------------------------------------------------------------------------
# ADA controller
def test_ada_probability_rises_when_d_overfits_and_falls_otherwise() -> None:
    ada = AdaptiveAugmentProbability(target=0.6, speed_kimg=1.0, interval=2, initial_p=0.5)
    confident = torch.full((8,), 3.0)  # sign(D(real)) = +1 everywhere: r_t = 1 > 0.6
    ada.update(confident)
    assert ada.probability == 0.5  # moves only every `interval` updates
    ada.update(confident)
    # 16 images seen / (1 kimg) -> +0.016
    assert ada.probability == pytest.approx(0.516)
    assert float(ada.r_t) == 1.0
    mixed = torch.tensor([1.0, -1.0, 1.0, -1.0])  # r_t = 0 < target
    for _ in range(4):
        ada.update(mixed)
    assert ada.probability == pytest.approx(0.516 - 2 * 0.008)
    for _ in range(1000):
        ada.update(confident)
    assert ada.probability == 1.0  # clamped
    state = ada.state_dict()
    restored = AdaptiveAugmentProbability(target=0.6, speed_kimg=1.0, interval=2)
    restored.load_state_dict(state)
    assert restored.probability == 1.0


# ---------------------------------------------------------------------------------------------
# StyleGANFinetuneModule on a tiny generator and the embedded world's character faces
TINY_G = {"size": 32, "style_dim": 32, "n_mlp": 2, "channel_max": 32}
MAX_STEPS = 12
RESUME_STEPS = 16
R1_EVERY = 4


def _tiny_start_checkpoint(path: Path, with_d: bool = True) -> Path:
    """A rosinality-format start file {g_ema, latent_avg, g, d} with g != g_ema."""
    torch.manual_seed(123)
    g, g_ema = Generator(**TINY_G), Generator(**TINY_G)
    state: dict[str, Any] = {
        "g_ema": g_ema.state_dict(),
        "g": g.state_dict(),
        "latent_avg": torch.zeros(TINY_G["style_dim"]),
    }
    if with_d:
        state["d"] = Discriminator(32, channel_max=32).state_dict()
    torch.save(state, path)
    return path


def _module(init_ckpt: Path | None, export_path: Path | None = None, **overrides: Any):
    kwargs: dict[str, Any] = {
        "generator": TINY_G,
        "init_ckpt": str(init_ckpt) if init_ckpt else None,
        "allow_random_init": init_ckpt is None,
        "r1_every": R1_EVERY,
        "freeze_d_blocks": 2,
        "freeze_mapping": True,
        "freeze_g_max_resolution": 8,
        "ema_decay": 0.8,  # fast, so a dozen steps move g_ema measurably
        "augment": {"adaptive": True, "p": 0.5, "speed_kimg": 0.05, "interval": 2},
        "sample_every": 8,
        "num_samples": 4,
        "latent_avg_samples": 64,
        "export_path": str(export_path) if export_path else None,
    }
    kwargs.update(overrides)
    return StyleGANFinetuneModule(**kwargs)


class _StepRecorder(pl.Callback):
    """global_step seen at each batch, and the module's state when training (re)starts."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.start_state: dict[str, torch.Tensor] = {}
        self.start_p: float | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start_state = {k: v.clone() for k, v in module.g_ema.state_dict().items()}
        self.start_p = module.ada.probability

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


def _trainer(root: Path, max_steps: int, recorder: pl.Callback) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        default_root_dir=str(root),
        accelerator="cpu",
        logger=CSVLogger(str(root), name="csv", version=""),
        callbacks=[
            recorder,
            ModelCheckpoint(
                dirpath=str(root / "checkpoints"),
                save_last=True,
                save_top_k=0,
                every_n_train_steps=6,
            ),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("finetune")
    start = _tiny_start_checkpoint(root / "start.pt")
    pl.seed_everything(0)
    data = FaceFolderDataModule(
        image_dir=None, size=32, batch_size=4, num_embedded=16, samples_per_epoch=64
    )
    module = _module(start, export_path=root / "out" / "G_t.pt")
    initial = {
        "g": {k: v.clone() for k, v in module.g.state_dict().items()},
        "g_ema": {k: v.clone() for k, v in module.g_ema.state_dict().items()},
        "d": {k: v.clone() for k, v in module.d.state_dict().items()},
    }
    faces = data.load_faces().float() / 127.5 - 1
    with torch.no_grad():
        margin_before = _real_fake_margin(module, faces)
    recorder = _StepRecorder()
    trainer = _trainer(root, MAX_STEPS, recorder)
    trainer.fit(module, datamodule=data)
    return {
        "root": root,
        "start": start,
        "module": module,
        "trainer": trainer,
        "initial": initial,
        "faces": faces,
        "margin_before": margin_before,
        "recorder": recorder,
        "data": data,
    }


def _real_fake_margin(module: StyleGANFinetuneModule, faces: torch.Tensor) -> float:
    """mean D(real) - mean D(G(z)) on un-augmented images (fixed z)."""
    z = torch.randn(16, TINY_G["style_dim"], generator=torch.Generator().manual_seed(5))
    fakes = module.g([z], randomize_noise=False)[0]
    return float(module.d(faces).mean() - module.d(fakes).mean())


def test_max_steps_counts_generator_steps(trained: dict[str, Any]) -> None:
    module, trainer = trained["module"], trained["trainer"]
    assert trainer.global_step == MAX_STEPS
    assert trained["recorder"].steps == list(range(MAX_STEPS))  # one G step per batch
    g_optim, d_optim = (o.optimizer for o in module.optimizers())
    g_steps = {int(s["step"]) for s in g_optim.state.values()}
    d_steps = {int(s["step"]) for s in d_optim.state.values()}
    r1_steps = len(range(0, MAX_STEPS, R1_EVERY))  # lazy R1 at steps 0, 4, 8
    assert g_steps == {MAX_STEPS} and d_steps == {MAX_STEPS + r1_steps}


def test_discriminator_separates_real_from_fake(trained: dict[str, Any]) -> None:
    with torch.no_grad():
        margin = _real_fake_margin(trained["module"], trained["faces"])
    assert margin > 0, margin  # D(real) > D(fake) on average
    assert margin > trained["margin_before"]


def test_frozen_weights_are_bit_identical_and_the_rest_trained(trained: dict[str, Any]) -> None:
    module, initial = trained["module"], trained["initial"]
    g_state, d_state = module.g.state_dict(), module.d.state_dict()
    ema_state = module.g_ema.state_dict()
    assert any(n.startswith("style.") for n in module.frozen_g)  # mapping frozen
    assert {"conv1.conv.weight", "convs.1.conv.weight", "to_rgbs.0.bias"} <= module.frozen_g
    assert "convs.2.conv.weight" not in module.frozen_g  # 16 px: trained
    assert module.frozen_d == {
        n for n, _ in module.d.named_parameters() if n[:8] in ("convs.0.", "convs.1.")
    }
    for name in module.frozen_g:
        assert torch.equal(g_state[name], initial["g"][name]), name
        assert torch.equal(ema_state[name], initial["g_ema"][name]), name
    for name in module.frozen_d:
        assert torch.equal(d_state[name], initial["d"][name]), name
    trained_g = [n for n, _ in module.g.named_parameters() if n not in module.frozen_g]
    trained_d = [n for n, _ in module.d.named_parameters() if n not in module.frozen_d]
    assert all(
        not torch.equal(g_state[n], initial["g"][n])
        for n in trained_g
        if not n.endswith("noise.weight")
    )
    assert sum(not torch.equal(d_state[n], initial["d"][n]) for n in trained_d) == len(trained_d)


def test_ema_generator_differs_from_g_and_from_its_start(trained: dict[str, Any]) -> None:
    module, initial = trained["module"], trained["initial"]
    name = "convs.3.conv.weight"  # a trained 16 px layer
    ema, g = module.g_ema.state_dict()[name], module.g.state_dict()[name]
    assert not torch.equal(ema, g)
    assert not torch.equal(ema, initial["g_ema"][name])
    # EMA lies between where it started and where G is now (closer to G than the start was)
    assert (ema - g).norm() < (initial["g_ema"][name] - g).norm()
    # the source generator of the grids is the untouched start g_ema
    assert torch.equal(module.g_source.state_dict()[name], initial["g_ema"][name])


def test_adaptive_augmentation_probability_moved(trained: dict[str, Any]) -> None:
    module = trained["module"]
    assert int(module.ada.updates) == MAX_STEPS
    assert module.ada.probability != 0.5  # started at 0.5 and followed r_t
    metrics = (trained["root"] / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/d_loss", "train/g_loss", "train/r1", "train/aug_p", "train/r_t"):
        assert key in metrics


def test_sample_grids_show_source_above_adapted(trained: dict[str, Any]) -> None:
    samples = sorted(p.name for p in (trained["root"] / "samples").glob("*.png"))
    assert samples == ["step_000000.png", "step_000008.png", "step_000012.png"]
    grid = read_image(trained["root"] / "samples" / "step_000012.png")
    assert grid.shape == (2 * 32, 4 * 32, 3)  # 4 latents: one row pair
    # step 0: g_ema was the start g_ema = g_source, so both rows are identical
    first = read_image(trained["root"] / "samples" / "step_000000.png")
    assert np.array_equal(first[:32], first[32:])
    assert not np.array_equal(grid[:32], grid[32:])


def test_exported_checkpoint_loads_back_strictly(trained: dict[str, Any]) -> None:
    module = trained["module"]
    path = trained["root"] / "out" / "G_t.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"g_ema", "latent_avg", "g", "d"}  # rosinality converted layout
    sidecar = OmegaConf.load(path.with_suffix(".yaml"))
    assert sidecar.g_steps == MAX_STEPS and dict(sidecar.generator) == TINY_G
    parts = load_stylegan2_checkpoint(path)
    fresh_g = Generator(**sidecar.generator)
    fresh_g.load_state_dict(raw["g_ema"], strict=True)  # what upstream scripts do
    load_into(fresh_g, parts["g_ema"], source=path, expected="tiny G")
    fresh_d = Discriminator(**sidecar.discriminator)
    load_into(fresh_d, parts["d"], source=path, expected="tiny D")
    for name, value in module.g_ema.state_dict().items():
        assert torch.equal(fresh_g.state_dict()[name], value), name
    for name, value in module.g.state_dict().items():
        assert torch.equal(parts["g"][name], value), name
    for name, value in module.d.state_dict().items():
        assert torch.equal(fresh_d.state_dict()[name], value), name
    assert parts["latent_avg"].shape == (TINY_G["style_dim"],)
    torch.testing.assert_close(parts["latent_avg"], module.mapping_mean())
    z = torch.randn(2, TINY_G["style_dim"])
    torch.testing.assert_close(
        fresh_g([z], randomize_noise=False)[0], module.g_ema([z], randomize_noise=False)[0]
    )


def test_resume_continues_from_the_same_step(trained: dict[str, Any]) -> None:
    root = trained["root"]
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file()
    pl.seed_everything(1)
    module = _module(trained["start"], export_path=root / "resumed" / "G_t.pt")
    recorder = _StepRecorder()
    trainer = _trainer(root / "resumed", RESUME_STEPS, recorder)
    trainer.fit(module, datamodule=trained["data"], ckpt_path=str(last))
    assert recorder.steps == list(range(MAX_STEPS, RESUME_STEPS))
    assert trainer.global_step == RESUME_STEPS
    # it restarted from the saved weights and augmentation state, not from the start file
    for name, value in trained["module"].g_ema.state_dict().items():
        assert torch.equal(recorder.start_state[name], value), name
    assert recorder.start_p == trained["module"].ada.probability
    g_optim = module.optimizers()[0].optimizer
    assert {int(s["step"]) for s in g_optim.state.values()} == {RESUME_STEPS}


def test_export_from_a_lightning_checkpoint(trained: dict[str, Any], tmp_path: Path) -> None:
    """An interrupted run's last.ckpt can be turned into G_t without training further."""
    last = trained["root"] / "checkpoints" / "last.ckpt"
    module = StyleGANFinetuneModule.load_from_checkpoint(last, map_location="cpu")
    path = module.export(tmp_path / "G_t_from_ckpt.pt")
    parts = load_stylegan2_checkpoint(path)
    assert OmegaConf.load(path.with_suffix(".yaml")).g_steps == MAX_STEPS
    for name, value in trained["module"].g_ema.state_dict().items():
        assert torch.equal(parts["g_ema"][name], value), name


# ---------------------------------------------------------------------------------------------
# start point and settings
def test_start_point_comes_from_the_rosinality_file(tmp_path: Path) -> None:
    start = _tiny_start_checkpoint(tmp_path / "start.pt")
    raw = torch.load(start, weights_only=True)
    module = _module(start)
    for name, value in raw["g"].items():
        assert torch.equal(module.g.state_dict()[name], value)
    for name, value in raw["g_ema"].items():
        assert torch.equal(module.g_ema.state_dict()[name], value)
        assert torch.equal(module.g_source.state_dict()[name], value)
    for name, value in raw["d"].items():
        assert torch.equal(module.d.state_dict()[name], value)
    # a bare file name is looked up in weights_dir
    by_name = _module(Path("start.pt"), weights_dir=str(tmp_path))
    assert torch.equal(by_name.g.style[1].weight, module.g.style[1].weight)
    with pytest.raises(MissingWeightsError, match="absent.pt"):
        _module(Path("absent.pt"), weights_dir=str(tmp_path))


def test_start_point_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allow_random_init"):
        StyleGANFinetuneModule(generator=TINY_G, init_ckpt=None)
    no_d = _tiny_start_checkpoint(tmp_path / "no_d.pt", with_d=False)
    with pytest.raises(ValueError, match="FreezeD"):
        _module(no_d, freeze_d_blocks=2)
    _module(no_d, freeze_d_blocks=0)  # D from scratch is allowed (logged)
    with pytest.raises(CheckpointMismatchError):
        _module(no_d, generator={**TINY_G, "style_dim": 64})
    with pytest.raises(ValueError, match="freeze_d_blocks"):
        _module(None, freeze_d_blocks=99)
    with pytest.raises(ValueError, match="freeze_g_max_resolution"):
        _module(None, freeze_g_max_resolution=12)
    with pytest.raises(ValueError, match="unknown key"):
        _module(None, augment={"probability": 0.3})


def test_optimizers_use_lazy_regularisation_correction() -> None:
    module = _module(
        None, r1_every=16, freeze_d_blocks=0, freeze_mapping=False, freeze_g_max_resolution=0
    )
    g_optim, d_optim = module.configure_optimizers()
    ratio = 16 / 17
    assert g_optim.param_groups[0]["lr"] == 0.002 and g_optim.param_groups[0]["betas"] == (0, 0.99)
    assert d_optim.param_groups[0]["lr"] == pytest.approx(0.002 * ratio)
    assert d_optim.param_groups[0]["betas"] == pytest.approx((0.0, 0.99**ratio))
    assert len(g_optim.param_groups[0]["params"]) == len(list(module.g.parameters()))
    frozen = _module(None)
    g_frozen_optim, _ = frozen.configure_optimizers()
    assert len(g_frozen_optim.param_groups[0]["params"]) == len(list(frozen.g.parameters())) - len(
        frozen.frozen_g
    )


def test_pair_grid_keeps_source_above_adapted_in_every_row() -> None:
    source = torch.rand(5, 3, 4, 4) * 2 - 1
    adapted = -source
    grid = make_pair_grid(source, adapted, columns=3)
    assert grid.shape == (4 * 4, 3 * 4, 3)  # two row pairs of 3 columns
    cell = lambda row, col: grid[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4]  # noqa: E731
    assert np.array_equal(cell(0, 1), tensor_to_uint8(source[1]))
    assert np.array_equal(cell(1, 1), tensor_to_uint8(adapted[1]))
    assert np.array_equal(cell(2, 1), tensor_to_uint8(source[4]))
    assert np.array_equal(cell(3, 1), tensor_to_uint8(adapted[4]))
    assert (cell(3, 2) == 0).all()  # padding of the short last row


# ---------------------------------------------------------------------------------------------
# the experiment config (python train.py experiment=finetune_target debug=tiny)
def _compose_finetune(tmp_path: Path, debug: bool) -> Any:
    from portrait_toon import config

    overrides = ["experiment=finetune_target"] + (["debug=tiny"] if debug else [])
    cfg = config.compose_config("train", overrides, tmp_path / "run")
    config.apply_set_if_present(cfg)  # what the train task does first
    return cfg


def test_finetune_experiment_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    from portrait_toon import config

    cfg = _compose_finetune(tmp_path, debug=False)
    assert cfg.model.generator.size == cfg.data.size == 1024
    assert cfg.model.init_ckpt.endswith("stylegan2-ffhq-config-f.pt")
    with pytest.raises(config.ConfigError, match="stylegan2-ffhq-config-f.pt"):
        config.validate(cfg)


def test_finetune_experiment_runs_under_debug_tiny(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from portrait_toon import config

    cfg = _compose_finetune(tmp_path, debug=True)
    config.validate(cfg)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model)
    assert not getattr(data, "needs_synthesizer", True)
    assert data.size == model.generator_kwargs["size"] == cfg.resolution == 32
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[])
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == cfg.trainer.max_steps
    exported = Path(cfg.model.export_path)
    assert exported.is_file() and exported.with_suffix(".yaml").is_file()
    assert set(load_stylegan2_checkpoint(exported)) == {"g_ema", "latent_avg", "g", "d"}
