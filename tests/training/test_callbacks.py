"""Sample grids: written every N steps and at the end, atomically, with the right layout; sent to
W&B-type loggers; fixed rows survive a checkpoint. Also the torchvision-free make_grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from portrait_toon.nets.unet import UNet
from portrait_toon.training.callbacks import SampleGridCallback, sample_grid
from portrait_toon.training.stylizer import StylizerModule
from portrait_toon.utils.grid import label_image, make_grid, tensor_to_uint8

SIZE = 32


class Pairs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.src = torch.rand(6, 3, SIZE, SIZE, generator=generator) * 2 - 1
        self.tgt = -self.src

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"src": self.src[i], "tgt": self.tgt[i]}


def read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_make_grid_layout() -> None:
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 2, 3)
    grid = make_grid(images, nrow=2, padding=1, pad_value=-1)
    assert grid.shape == (3, 3 * 3 + 1, 2 * 4 + 1)
    assert grid[0, 1, 1] == 0 and grid[0, 1, 5] == 1 and grid[0, 4, 1] == 2 and grid[0, 7, 1] == 4
    assert grid[0, 7, 5] == -1  # the empty sixth cell stays padding
    assert grid[0, 0].eq(-1).all()
    with pytest.raises(ValueError, match="share one shape"):
        make_grid([torch.zeros(3, 2, 2), torch.zeros(3, 2, 3)])


def test_label_image_adds_a_strip_and_keeps_the_image() -> None:
    image = np.full((20, 60, 3), 128, dtype=np.uint8)
    labelled = label_image(image, "a rather long caption that cannot fit")
    assert labelled.shape[1] == 60 and labelled.shape[0] > 20
    assert np.array_equal(labelled[-20:], image)
    assert labelled[: labelled.shape[0] - 20].max() > 200  # text pixels were drawn


def test_sample_grid_puts_columns_in_order() -> None:
    src = torch.full((2, 3, 8, 8), -1.0)
    tgt = torch.full((2, 3, 8, 8), 1.0)
    out = torch.zeros(2, 3, 8, 8)
    ema = torch.full((2, 3, 8, 8), 0.5)
    grid = sample_grid(src, tgt, out, ema)
    body = grid[grid.shape[0] - (2 * 10 + 2) :]
    assert grid.shape[1] == 4 * 10 + 2
    expected = [0, 255, 128, 191]
    for column, value in enumerate(expected):
        left = 2 + column * 10
        assert (body[2:10, left : left + 8] == value).all(), column
        assert (body[12:20, left : left + 8] == value).all(), column


def test_callback_writes_grids_and_survives_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = StylizerModule(
        net=UNet(base_channels=8, depth=3, channel_mult=(1, 2, 4)),
        loss={"perceptual": {"kind": "none"}, "adv": {"weight": 0}},
    )
    callback = SampleGridCallback(every_n_steps=2, num_images=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=3)
    trainer.fit(module, train_dataloaders=loader)
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == ["step_0000002.png", "step_0000004.png", "step_0000005.png"]  # + the end
    image = read_png(tmp_path / "samples" / "step_0000005.png")
    assert image.shape[1] == 4 * (SIZE + 2) + 2
    body = image[image.shape[0] - (3 * (SIZE + 2) + 2) :]
    first_source = body[2 : 2 + SIZE, 2 : 2 + SIZE]
    assert np.array_equal(first_source, tensor_to_uint8(Pairs().src[0]))
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "samples").iterdir())

    restored = SampleGridCallback(every_n_steps=2, num_images=3)
    restored.load_state_dict(callback.state_dict())
    torch.testing.assert_close(restored.fixed_src, Pairs().src[:3])


def test_images_go_to_wandb_type_loggers(tmp_path: Path) -> None:
    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:  # no wandb run: only the logging call is recorded
            self.calls: list[tuple] = []

        def log_image(self, key, images, step=None, **kwargs) -> None:
            self.calls.append((key, images, step))

    recorder = RecordingWandb()
    callback = SampleGridCallback(every_n_steps=1, num_images=1)
    callback._log_image(SimpleNamespace(loggers=[recorder]), np.zeros((4, 4, 3), np.uint8), 7)
    assert recorder.calls and recorder.calls[0][0] == "samples" and recorder.calls[0][2] == 7
