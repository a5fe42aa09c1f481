"""VGG16/VGG19 in torchvision's layout (loads `vgg16-397923af.pth` / `vgg19-dcbb9e9d.pth`) and a
feature extractor that returns named ReLU taps and stops at the deepest one requested.

Written from the architecture description only (no torchvision import: it is not a dependency).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

# Channel plans: an int is a 3x3 conv (zero padding 1) + ReLU, "M" a 2x2 max-pool.
CFGS: dict[str, list[int | str]] = {
    "vgg16": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
    ],
    "vgg19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_layers(cfg: Sequence[int | str]) -> tuple[nn.Sequential, dict[str, int]]:
    """`features` Sequential (torchvision indices) and the map layer name -> index
    (`conv1_1`, `relu1_1`, ..., `pool1`, ...)."""
    layers: list[nn.Module] = []
    names: dict[str, int] = {}
    in_ch, block, conv_in_block = 3, 1, 0
    for item in cfg:
        if item == "M":
            names[f"pool{block}"] = len(layers)
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            block, conv_in_block = block + 1, 0
            continue
        conv_in_block += 1
        names[f"conv{block}_{conv_in_block}"] = len(layers)
        layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
        names[f"relu{block}_{conv_in_block}"] = len(layers)
        layers.append(nn.ReLU(inplace=True))
        in_ch = int(item)
    return nn.Sequential(*layers), names


class VGG(nn.Module):
    """torchvision-layout VGG: `features.N` convs, `avgpool` to 7x7, `classifier.{0,3,6}`.

    `forward(x)` returns ImageNet logits. `features_at(x, taps)` returns named feature maps and runs
    `features` only as far as the deepest tap. Inputs are used as given; ImageNet
    normalisation is the caller's job (or use `VGGFeatures(..., imagenet_normalize=True)`).
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features, self.layer_index = make_layers(cfg)
        # The last ReLU of each block: relu1_2, relu2_2, relu3_4, ... for VGG19.
        last_relu: dict[str, str] = {}
        for name in self.layer_index:
            if name.startswith("relu"):
                last_relu[name.split("_")[0]] = name
        self.default_taps: tuple[str, ...] = tuple(last_relu.values())
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def features_at(self, x: Tensor, taps: Iterable[str]) -> dict[str, Tensor]:
        """Feature maps at the named layers (e.g. `relu3_4`), in the order asked."""
        taps = tuple(taps)
        indices = self.tap_indices(taps)
        return _run_taps(self.features, x, taps, indices)

    def tap_indices(self, taps: Sequence[str]) -> list[int]:
        unknown = [t for t in taps if t not in self.layer_index]
        if unknown or not taps:
            known = ", ".join(n for n in self.layer_index if n.startswith("relu"))
            raise ValueError(f"unknown VGG tap(s) {unknown or '(none given)'}; ReLU taps: {known}")
        return [self.layer_index[t] for t in taps]


def _run_taps(
    features: nn.Sequential, x: Tensor, taps: Sequence[str], indices: Sequence[int]
) -> dict[str, Tensor]:
    wanted = {idx: name for name, idx in zip(taps, indices)}
    last = max(indices)
    found: dict[str, Tensor] = {}
    for idx, layer in enumerate(features):
        x = layer(x)
        if idx in wanted:
            # A conv's output is overwritten by the in-place ReLU after it: keep a copy.
            # ReLU/pool outputs are never modified later (the next layer is not in-place).
            nxt = features[idx + 1] if idx + 1 < len(features) else None
            overwritten = isinstance(nxt, nn.ReLU) and nxt.inplace
            found[wanted[idx]] = x.clone() if overwritten else x
        if idx == last:
            break
    return {name: found[name] for name in taps}


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG16 (torchvision `vgg16()`, cfg D): loads `vgg16-397923af.pth`."""
    return VGG(CFGS["vgg16"], num_classes=num_classes)


def vgg19(num_classes: int = 1000) -> VGG:
    """VGG19 (torchvision `vgg19()`, cfg E): loads `vgg19-dcbb9e9d.pth`."""
    return VGG(CFGS["vgg19"], num_classes=num_classes)


class VGGFeatures(nn.Module):
    """Named ReLU taps of a VGG trunk, holding only the layers up to the deepest tap.

    `VGGFeatures(vgg19(), taps=("relu1_2", "relu5_4"))` shares the given VGG's conv modules
    (load the checkpoint into the VGG first); layers past the deepest tap are neither kept
    nor run. `forward(x) -> dict[name, Tensor]`. With `imagenet_normalize=True` the input,
    given in `input_range` (default [-1, 1]), is mapped to [0, 1] and ImageNet-normalised;
    by default the input is used as is. Default taps: the last ReLU of each block (relu1_2,
    relu2_2, relu3_4, relu4_4, relu5_4 for VGG19; relu3_3, relu4_3, relu5_3 for VGG16).
    Its own state_dict holds `features.N.*` keys only.
    """

    def __init__(
        self,
        vgg: VGG,
        taps: Sequence[str] | None = None,
        imagenet_normalize: bool = False,
        input_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.taps = tuple(taps) if taps is not None else vgg.default_taps
        self.tap_index = vgg.tap_indices(self.taps)
        self.features = vgg.features[: max(self.tap_index) + 1]
        self.imagenet_normalize = imagenet_normalize
        low, high = input_range
        # x01 = (x - low) / (high - low); then (x01 - mean) / std, folded into one affine map.
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("in_scale", 1.0 / ((high - low) * std), persistent=False)
        self.register_buffer("in_shift", (-low / (high - low) - mean) / std, persistent=False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.imagenet_normalize:
            x = x * self.in_scale + self.in_shift
        return _run_taps(self.features, x, self.taps, self.tap_index)
