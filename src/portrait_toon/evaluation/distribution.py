"""Distribution distances between F's outputs and the targets (docs/method.md, evaluation).

KID (Binkowski et al., 2018) is the unbiased squared MMD between two feature sets under the
cubic polynomial kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets;
FID (Heusel et al., 2017) is ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of Gaussian
fits. Both are torchmetrics' implementations, given a feature network:

- `STLPIPSFeatures`: the shift-tolerant LPIPS VGG16 that ships offline (nets/perceptual.py):
  its five taps unit-normalised over channels (the space LPIPS compares in), averaged over the
  image, concatenated (1472 numbers) and scaled by sqrt(1472 / 5), so that a.b / d is O(1) as
  for Inception's pool3 vectors (unscaled, every kernel value is ~1 and KID ~1e-5 whatever the
  sets). Measured on 32 world photos at 128 px: KID 0.02 against 32 other photos, 0.26 against
  the same posterized, 0.7 blurred, 1.6 under a purple cast. KID on these is `kid_stlpips` —
  not the Inception KID of the literature, not comparable with published figures; it needs
  no download.
- `InceptionFeatures`: the FID Inception-v3 (pool3, 2048 numbers) from a weights file the user
  supplies (`evaluate.inception_weights`, torch-fidelity's `pt_inception-2015-12-05` file):
  `fid_inception` / `kid_inception`, comparable with published figures.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from portrait_toon.nets.perceptual import ShiftTolerantLPIPS

__all__ = [
    "DistributionDistance",
    "InceptionFeatures",
    "MissingInceptionWeightsError",
    "STLPIPSFeatures",
]

INCEPTION_WEIGHTS_KEY = "evaluate.inception_weights"
# KID's subsets: torchmetrics draws `subsets` random subsets of this many images from each set
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000


class MissingInceptionWeightsError(FileNotFoundError):
    """`evaluate.inception_weights` names no file (or the Inception code is not installed)."""


class STLPIPSFeatures(nn.Module):
    """[B,3,H,W] in [-1, 1] -> [B, 1472]: spatial means of the unit-normalised ST-LPIPS VGG16
    taps (relu1_2 ... relu5_3), times sqrt(1472 / 5). `lpips` reuses a loaded
    ShiftTolerantLPIPS (one copy of the weights)."""

    num_features = 64 + 128 + 256 + 512 + 512  # read by torchmetrics instead of a dummy pass

    def __init__(self, lpips: ShiftTolerantLPIPS | None = None) -> None:
        super().__init__()
        self.lpips = lpips if lpips is not None else ShiftTolerantLPIPS()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taps = self.lpips._features(images.float())
        features = torch.cat([tap.mean(dim=(2, 3)) for tap in taps], dim=1).double()
        # each tap's vector has norm <= 1: the scale makes a.b / d ~ cos(a, b) / 5 per tap
        return features * math.sqrt(self.num_features / len(taps))


class InceptionFeatures(nn.Module):
    """[B,3,H,W] in [-1, 1] (or uint8) -> [B, 2048] FID Inception-v3 pool3 features, from the
    weights file `weights_path` (torch-fidelity's network, through torchmetrics)."""

    num_features = 2048

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MissingInceptionWeightsError(
                f"{INCEPTION_WEIGHTS_KEY}={weights_path}: no such file. Point it to the FID "
                "Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth, from torch-fidelity's "
                "releases on GitHub), or set it to null to skip fid_inception / kid_inception."
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as error:  # pragma: no cover - torchmetrics is a dependency
            raise MissingInceptionWeightsError(f"{INCEPTION_WEIGHTS_KEY}: {error}") from error
        if not _TORCH_FIDELITY_AVAILABLE:
            raise MissingInceptionWeightsError(
                f"{INCEPTION_WEIGHTS_KEY} is set, but the Inception network's code comes from "
                "torch-fidelity, which is not installed: `pip install torch-fidelity` (it needs "
                "torchvision), or set the key to null."
            )
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(self.num_features)],
            feature_extractor_weights_path=str(path),
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            images = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return self.net(images).double()


class DistributionDistance:
    """Collects real (targets) and fake (F's outputs) images; `compute()` -> KID (and FID).

    `name` prefixes the result keys: `kid_<name>`, `kid_<name>_std` and, with `fid=True`,
    `fid_<name>`. Needs at least two images on each side.
    """

    def __init__(self, features: nn.Module, name: str, fid: bool = False) -> None:
        self.features = features
        self.name = name
        self.fid = fid
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        self.real.append(self.features(real).cpu())
        self.fake.append(self.features(fake).cpu())

    def compute(self) -> dict[str, float | None]:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        real = torch.cat(self.real) if self.real else torch.empty(0)
        fake = torch.cat(self.fake) if self.fake else torch.empty(0)
        count = min(real.shape[0], fake.shape[0])
        result: dict[str, float | None] = {f"kid_{self.name}": None, f"kid_{self.name}_std": None}
        if self.fid:
            result[f"fid_{self.name}"] = None
        if count < 2:
            return result
        # The features are computed already: torchmetrics gets them through an identity
        # "network" (its maths, our features).
        identity = _Precomputed(real.shape[1])
        with warnings.catch_warnings():  # "saves all features in a buffer": two small sets
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(
                feature=identity,
                subsets=KID_SUBSETS,
                subset_size=min(count, KID_MAX_SUBSET),
                # only rank 0 evaluates: a cross-rank sync would wait for ranks that left
                sync_on_compute=False,
            )
        kid.update(real, real=True)
        kid.update(fake, real=False)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the subsets: the same draw every evaluation
        try:
            mean, std = kid.compute()
        finally:
            torch.random.set_rng_state(generator_state)
        result[f"kid_{self.name}"], result[f"kid_{self.name}_std"] = float(mean), float(std)
        if self.fid:
            fid = FrechetInceptionDistance(feature=identity, sync_on_compute=False)
            fid.update(real, real=True)
            fid.update(fake, real=False)
            result[f"fid_{self.name}"] = float(fid.compute())
        return result


class _Precomputed(nn.Module):
    """Passes feature vectors through (torchmetrics' metrics expect a feature network)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
