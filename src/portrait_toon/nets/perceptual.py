"""Perceptual distances used as training losses: shift-tolerant LPIPS and VGG19 feature L1.

`ShiftTolerantLPIPS` is our own module with the layout of the shift-tolerant LPIPS VGG16
(Ghildyal & Liu, ECCV 2022): VGG16 whose max-pools are stride-1 followed by an anti-aliasing
blur-pool, plus LPIPS's per-channel linear calibration. It loads the weight file that ships
inside the `stlpips-pytorch` wheel; that package's code is never imported (only the file's
location is looked up), so its licence does not reach this project.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STLPIPS_PACKAGE = "stlpips_pytorch"
STLPIPS_VGG_FILE = "weights/vST0.0/vgg_shift_tolerant.pth"
# VGG16 (configuration "D"): convs per stage; each stage after the first starts with a pool.
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# Lower resolutions cannot be pooled 4 times with the 2-pixel reflect pad of the blur-pool.
_MIN_SIDE = 32
_NORM_EPS = 1e-10


class MissingPerceptualWeightsError(FileNotFoundError):
    """A perceptual network's weight file is not installed; the message says how to get it."""


def find_stlpips_weights() -> Path:
    """Path of `vgg_shift_tolerant.pth` inside the installed stlpips-pytorch wheel.

    Located with `importlib.util.find_spec`, which finds a top-level package without running
    its code.
    """
    spec = importlib.util.find_spec(STLPIPS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / STLPIPS_VGG_FILE
        if path.is_file():
            return path
    raise MissingPerceptualWeightsError(
        f"shift-tolerant LPIPS weights not found: {STLPIPS_VGG_FILE} ships inside the "
        f"stlpips-pytorch wheel (searched {locations or 'no installed package'}). Install it with "
        "`pip install --no-deps stlpips-pytorch==0.0.2` (`make install` does), or choose "
        "loss.perceptual.kind=vgg19 or none."
    )


def _resize_to_max_side(x: torch.Tensor, max_size: int | None) -> torch.Tensor:
    """Downscale so the longer side is at most `max_size` (antialiased); never upscale."""
    if max_size is None:
        return x
    height, width = x.shape[-2:]
    longest = max(height, width)
    if longest <= max_size:
        return x
    scale = max_size / longest
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _unit_normalize(features: torch.Tensor) -> torch.Tensor:
    """LPIPS's channel-wise unit normalisation of a feature map."""
    norm = features.pow(2).sum(dim=1, keepdim=True).sqrt()
    return features / (norm + _NORM_EPS)


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect pad 2, depthwise [1,2,1]x[1,2,1]/16 blur.

    The kernel is a persistent buffer named `filt` (one copy per channel), as in the file.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps)
        kernel = kernel / kernel.sum()
        self.register_buffer("filt", kernel[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(x, self.filt, stride=2, groups=x.shape[1])


class ScalingLayer(nn.Module):
    """LPIPS input scaling from [-1,1] to ImageNet-normalised values (buffers from the file)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class ShiftTolerantVGG16(nn.Module):
    """VGG16 convs in five slices ending at relu1_2 ... relu5_3; every pool is
    MaxPool(2, stride 1) + BlurPool. Module names follow the flat VGG index (`slice2.6` is
    features[6]) so the file's keys load as they are."""

    def __init__(self) -> None:
        super().__init__()
        index = 0
        in_channels = 3
        for stage, widths in enumerate(_VGG16_STAGES, start=1):
            layers: dict[str, nn.Module] = {}
            if stage > 1:
                layers[str(index)] = nn.MaxPool2d(kernel_size=2, stride=1)
                layers[str(index + 1)] = BlurPool(in_channels)
                index += 2
            for width in widths:
                layers[str(index)] = nn.Conv2d(in_channels, width, 3, padding=1)
                layers[str(index + 1)] = nn.ReLU(inplace=True)
                index += 2
                in_channels = width
            self.add_module(f"slice{stage}", nn.Sequential())
            for name, layer in layers.items():
                getattr(self, f"slice{stage}").add_module(name, layer)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for stage in range(1, len(_VGG16_STAGES) + 1):
            x = getattr(self, f"slice{stage}")(x)
            taps.append(x)
        return taps


class LinearCalibration(nn.Module):
    """LPIPS's 1x1 conv (no bias) weighting each channel's squared difference. The file's key is
    `model.1.weight` (index 0 held a Dropout there, inactive at eval; an Identity here)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _FrozenMetric(nn.Module):
    """A frozen network: no trainable parameters, always in eval mode."""

    def _freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _FrozenMetric:
        # A loss network must not switch to training behaviour with its owner.
        return super().train(False)


class ShiftTolerantLPIPS(_FrozenMetric):
    """Shift-tolerant LPIPS (VGG16): `forward(x, y) -> Tensor[B]`, inputs in [-1, 1].

    Args:
        weights_path: the `vgg_shift_tolerant.pth` file; default: the one in the installed
            stlpips-pytorch wheel. Loaded strictly (all 37 tensors, nothing else).
        pretrained: False builds random weights (tests of shapes only).
        max_size: downscale both images (same factor, antialiased) so the longer side is at
            most this before the VGG; the cost grows with the pixel count.
        target_no_grad: compute `y`'s features without autograd (y is the training target);
            saves the memory and time of a second backward graph.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        pretrained: bool = True,
        max_size: int | None = None,
        target_no_grad: bool = True,
    ) -> None:
        super().__init__()
        self.max_size = max_size
        self.target_no_grad = target_no_grad
        self.scaling_layer = ScalingLayer()
        self.net = ShiftTolerantVGG16()
        for index, channels in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{index}", LinearCalibration(channels))
        if pretrained:
            path = Path(weights_path) if weights_path is not None else find_stlpips_weights()
            self.load_weights(path)
        self._freeze()

    def load_weights(self, path: Path) -> None:
        """Strictly load the shift-tolerant LPIPS file; mismatches name the keys."""
        if not path.is_file():
            raise MissingPerceptualWeightsError(f"shift-tolerant LPIPS weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state_dict, found {type(state).__name__}")
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(
            f"{key}: file {tuple(state[key].shape)} vs module {tuple(expected[key].shape)}"
            for key in set(state) & set(expected)
            if state[key].shape != expected[key].shape
        )
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"{path} does not match ShiftTolerantLPIPS: {len(missing)} missing {missing[:5]}, "
                f"{len(unexpected)} unexpected {unexpected[:5]}, {len(wrong_shape)} shape "
                f"mismatches {wrong_shape[:5]}"
            )
        self.load_state_dict(state, strict=True)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = _resize_to_max_side(x, self.max_size)
        if min(x.shape[-2:]) < _MIN_SIDE:
            raise ValueError(
                f"ShiftTolerantLPIPS needs images of at least {_MIN_SIDE} px a side, "
                f"got {tuple(x.shape)}"
            )
        return [_unit_normalize(f) for f in self.net(self.scaling_layer(x))]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(
                f"ShiftTolerantLPIPS: x {tuple(x.shape)} and y {tuple(y.shape)} differ"
            )
        features_x = self._features(x)
        if self.target_no_grad:
            with torch.no_grad():
                features_y = self._features(y)
        else:
            features_y = self._features(y)
        distance = x.new_zeros(x.shape[0])
        for index, (fx, fy) in enumerate(zip(features_x, features_y)):
            weighted = getattr(self, f"lin{index}")((fx - fy).pow(2))
            distance = distance + weighted.mean(dim=(1, 2, 3))
        return distance


class VGGPerceptual(_FrozenMetric):
    """L1 between ImageNet VGG19 ReLU features: `forward(x, y) -> Tensor[B]`, inputs in [-1,1].

    Args:
        weights_path: torchvision's `vgg19-dcbb9e9d.pth` (IMAGENET1K_V1), loaded strictly;
            required unless `pretrained=False`.
        layers: ReLU taps of `portrait_toon.nets.vgg` to compare (only the trunk up to the
            deepest one is kept).
        layer_weights: one weight per tap (default: all 1).
        max_size, target_no_grad: as for ShiftTolerantLPIPS.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        pretrained: bool = True,
        layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"),
        layer_weights: tuple[float, ...] | None = None,
        max_size: int | None = None,
        target_no_grad: bool = True,
    ) -> None:
        super().__init__()
        from portrait_toon.nets.vgg import VGGFeatures, vgg19

        self.layers = tuple(layers)
        weights = tuple(layer_weights) if layer_weights is not None else (1.0,) * len(layers)
        if len(weights) != len(self.layers):
            raise ValueError(
                f"VGGPerceptual: {len(self.layers)} layers but {len(weights)} layer_weights"
            )
        self.layer_weights = weights
        self.max_size = max_size
        self.target_no_grad = target_no_grad
        vgg = vgg19()
        if pretrained:
            if weights_path is None:
                raise MissingPerceptualWeightsError(
                    "VGGPerceptual needs torchvision's vgg19-dcbb9e9d.pth (ImageNet VGG19, from "
                    "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth; `make weights` "
                    "fetches it into paths.weights_dir); set loss.perceptual.weights_path or "
                    "use kind=stlpips"
                )
            from portrait_toon.checkpoints import load_into, load_state_dict_file

            path = Path(weights_path)
            state = load_state_dict_file(path)
            load_into(vgg, state, source=path, expected="torchvision vgg19 (vgg19-dcbb9e9d.pth)")
        # Keeps the trunk up to the deepest tap only; the classifier is dropped with `vgg`.
        self.vgg = VGGFeatures(vgg, taps=self.layers, imagenet_normalize=True)
        self._freeze()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = self.vgg(_resize_to_max_side(x, self.max_size))
        return [taps[name] for name in self.layers]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"VGGPerceptual: x {tuple(x.shape)} and y {tuple(y.shape)} differ")
        features_x = self._features(x)
        if self.target_no_grad:
            with torch.no_grad():
                features_y = self._features(y)
        else:
            features_y = self._features(y)
        distance = x.new_zeros(x.shape[0])
        for weight, fx, fy in zip(self.layer_weights, features_x, features_y):
            distance = distance + weight * (fx - fy).abs().mean(dim=(1, 2, 3))
        return distance
