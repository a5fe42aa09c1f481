"""Projection into a tiny G_t: the loss falls on an image G_t can make, w_c is the mean code of
the right shape, and task=character writes a file that mixer=cdsm loads."""

from __future__ import annotations

import math

import pytest
import torch

from portrait_toon import config
from portrait_toon.nets.perceptual import ShiftTolerantLPIPS
from portrait_toon.synthesis.mixers import CDSMMixer
from portrait_toon.synthesis.projection import (
    ProjectionOptions,
    learning_rate,
    noise_regularization,
    project,
)
from portrait_toon.synthesis.sources import StyleGAN2Generator, build_stylegan2

ARCH = {"size": 32, "style_dim": 32, "n_mlp": 2, "channel_max": 16}


@pytest.fixture(scope="module")
def g_t():
    return build_stylegan2(
        None,
        weights_dir=None,
        arch=ARCH,
        allow_random_init=True,
        init_seed=1,
        what="G_t",
        latent_avg_samples=256,
    )


class ConvFeatureDistance(torch.nn.Module):
    """A cheap stand-in for LPIPS: squared distance of frozen random conv features, [B]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.features(y)).square().mean(dim=(1, 2, 3))


def image_of(generator, seed: int, count: int = 2) -> torch.Tensor:
    with torch.no_grad():
        z = torch.randn(count, 32, generator=torch.Generator().manual_seed(seed))
        w = generator.get_latent(z)
        return generator([w], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)


def check_projection(result, targets, steps: int) -> None:
    assert result.codes.shape == (targets.shape[0], 8, 32)
    torch.testing.assert_close(result.w_c, result.codes.mean(0))
    assert result.loss_history.shape == (steps,)
    assert bool((result.final_losses < 0.7 * result.initial_losses).all())
    assert result.loss_history[-3:].mean() < result.loss_history[:3].mean()
    assert result.reconstructions.shape == targets.shape
    assert result.reconstructions_stored_noise.shape == targets.shape


def test_projection_lowers_the_loss_on_an_image_of_g_t(g_t):
    generator, latent_avg = g_t
    targets = image_of(generator, seed=3)
    options = ProjectionOptions(steps=12, batch_size=2, w_std_samples=500)
    result = project(generator, targets, latent_avg, ConvFeatureDistance(), options)
    check_projection(result, targets, steps=12)
    assert not any(p.requires_grad for p in generator.parameters())  # G_t untouched


def test_projection_with_shift_tolerant_lpips(g_t):
    generator, latent_avg = g_t
    targets = image_of(generator, seed=3)
    options = ProjectionOptions(steps=12, batch_size=2, w_std_samples=500)
    check_projection(
        project(generator, targets, latent_avg, ShiftTolerantLPIPS(), options), targets, steps=12
    )


def test_projection_is_deterministic_and_checks_the_image_size(g_t):
    generator, latent_avg = g_t
    targets = torch.zeros(1, 3, 32, 32)
    options = ProjectionOptions(steps=2, w_std_samples=100, perceptual_weight=0.0)
    first = project(generator, targets, latent_avg, None, options)
    second = project(generator, targets, latent_avg, None, options)
    assert torch.equal(first.codes, second.codes)
    with pytest.raises(ValueError, match=r"\[k, 3, 32, 32\]"):
        project(generator, torch.zeros(1, 3, 16, 16), latent_avg, None, options)
    with pytest.raises(ValueError, match="unknown key"):
        ProjectionOptions.from_mapping({"stepz": 3})


def test_schedule_and_noise_penalty():
    lrs = [learning_rate(t / 100, 0.1, 0.05, 0.25) for t in range(100)]
    assert lrs[0] == 0.0 and math.isclose(max(lrs), 0.1)
    assert lrs[2] < lrs[4] < lrs[50] and lrs[50] > lrs[90] > lrs[99] > 0
    rng = torch.Generator().manual_seed(0)
    white = torch.randn(2, 1, 32, 32, generator=rng)
    smooth = torch.nn.functional.interpolate(
        torch.randn(2, 1, 4, 4, generator=rng), size=32, mode="bilinear"
    )
    smooth = (smooth - smooth.mean()) / smooth.std()
    penalty_white, penalty_smooth = noise_regularization([white]), noise_regularization([smooth])
    assert penalty_white.shape == (2,)
    assert bool((penalty_smooth > 100 * penalty_white).all())  # content-carrying noise costs


def test_character_task_writes_a_code_that_cdsm_loads(tmp_path):
    from portrait_toon.tasks.character import project_character

    cfg = config.compose_config(
        "synthesize",
        [
            "experiment=webtoonme_512",
            "debug=tiny",
            "+character=default",
            "device=cpu",
            f"character.out_dir={tmp_path}",
            "character.perceptual.kind=none",
        ],
        tmp_path / "run",
    )
    config.apply_set_if_present(cfg)
    summary = project_character(cfg)
    assert summary["num_images"] == 2 and summary["final_loss"] < summary["initial_loss"]
    record = torch.load(summary["code_path"], weights_only=True)
    assert record["format"] == "portrait_toon.character_code/1"
    assert record["w_c"].shape == (8, 32) and record["codes"].shape == (2, 8, 32)
    assert (tmp_path / "w_c_reconstructions.png").is_file()
    source = StyleGAN2Generator(
        None, arch=dict(cfg.generator.arch), allow_random_init=True, latent_avg_samples=64
    )
    mixer = CDSMMixer(source, None, character_code=summary["code_path"], allow_random_init=True)
    assert torch.equal(mixer.w_c, record["w_c"])


def test_character_task_explains_what_it_needs(tmp_path):
    from portrait_toon.tasks.character import project_character

    procedural = config.compose_config("synthesize", ["+character=default"], tmp_path)
    with pytest.raises(config.ConfigError, match="generator=stylegan2"):
        project_character(procedural)
    no_group = config.compose_config("synthesize", ["experiment=webtoonme_512"], tmp_path)
    with pytest.raises(config.ConfigError, match="character: default"):
        project_character(no_group)
