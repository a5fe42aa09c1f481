"""KID on the ST-LPIPS VGG16 features (evaluation/distribution.py): ~0 for a set against
itself, growing with a shift of the set; the Inception path's errors name the key."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.evaluation.distribution import (
    DistributionDistance,
    InceptionFeatures,
    MissingInceptionWeightsError,
    STLPIPSFeatures,
)
from portrait_toon.nets.perceptual import MissingPerceptualWeightsError
from portrait_toon.synthesis.procedural import ProceduralGenerator


@pytest.fixture(scope="module")
def features() -> STLPIPSFeatures:
    try:
        return STLPIPSFeatures()
    except MissingPerceptualWeightsError as error:
        pytest.skip(str(error))


def kid(features: STLPIPSFeatures, real: torch.Tensor, fake: torch.Tensor) -> float:
    distance = DistributionDistance(features, "stlpips")
    for start in range(0, real.shape[0], 8):  # several updates, as batches come
        distance.update(real[start : start + 8], fake[start : start + 8])
    result = distance.compute()
    assert set(result) == {"kid_stlpips", "kid_stlpips_std"}
    return result["kid_stlpips"]


def test_kid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(features) -> None:
    photos, _ = ProceduralGenerator(32).sample(torch.arange(16))
    cast = torch.tensor([0.3, -0.2, 0.5]).view(1, 3, 1, 1)  # toward purple

    def shifted(strength: float) -> torch.Tensor:
        return (photos * (1 - 0.4 * strength) + cast * strength).clamp(-1, 1)

    same = kid(features, photos, photos)
    weak, strong = kid(features, photos, shifted(0.5)), kid(features, photos, shifted(1.0))
    # ~0: the unbiased estimator leaves -2 (mean k(x, x) - mean k(x, y)) / n, -0.05 at n = 16
    assert abs(same) < 0.15 * weak
    assert weak > 0.2 and strong > 2 * weak


def test_kid_needs_two_images_a_side(features) -> None:
    distance = DistributionDistance(features, "stlpips", fid=True)
    distance.update(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    assert distance.compute() == {"kid_stlpips": None, "kid_stlpips_std": None, "fid_stlpips": None}


def test_inception_weights_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(MissingInceptionWeightsError, match="evaluate.inception_weights"):
        InceptionFeatures(tmp_path / "missing.pth")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed: the missing-package error cannot be shown")
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    with pytest.raises(MissingInceptionWeightsError, match="torch-fidelity"):
        InceptionFeatures(weights)
