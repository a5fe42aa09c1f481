"""Face-parsing BiSeNet (zllrunning layout, 19 CelebAMask-HQ classes) and its class table.

Written from the architecture description only; the parameter names match the public
`79999_iter.pth`, so it loads with `strict=True` (manifest: bisenet_faceparsing_19.json).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Class ids of the public face-parsing checkpoint (79999_iter.pth, CelebAMask-HQ order):
# label = position + 1 in the dataset's `atts` list, 0 = background.
CELEBAMASK_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
CLASS_ID = {name: idx for idx, name in enumerate(CELEBAMASK_CLASSES)}

# docs/method.md §1.4: the head is every face part, the neck and the hair (ids 1-14 and 17);
# never background (0), necklace (15) or cloth (16). Hat (18) is optional.
HEAD_CLASS_IDS: tuple[int, ...] = (*range(1, 15), 17)
SKIN_CLASS_IDS: tuple[int, ...] = (CLASS_ID["skin"], CLASS_ID["nose"])

# The checkpoint was trained on ImageNet-normalised RGB in [0, 1] at 512 x 512.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARSE_SIZE = 512


class FoldableConv2d(nn.Conv2d):
    """A Conv2d that can run with the following BatchNorm folded into it (eval only).

    The folded weight/bias are non-persistent buffers, so the state_dict keeps the
    checkpoint's keys (`weight`, and the BN's own entries) whether folded or not.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)

    @torch.no_grad()
    def fold(self, bn: nn.BatchNorm2d) -> None:
        # eval BN: y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if self.bias is not None:
            bias = bias + self.bias * scale
        self.folded_weight = (self.weight * scale.view(-1, 1, 1, 1)).contiguous(
            memory_format=_memory_format_of(self.weight)
        )
        self.folded_bias = bias.detach().clone()

    def unfold(self) -> None:
        self.folded_weight = None
        self.folded_bias = None

    def forward_bn(self, x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
        """`bn(conv(x))`, or one conv with the folded parameters when folded and in eval."""
        if self.folded_weight is not None and not self.training:
            return F.conv2d(
                x,
                self.folded_weight,
                self.folded_bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        return bn(self.forward(x))


def _memory_format_of(t: Tensor) -> torch.memory_format:
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU; keys `.conv.weight`, `.bn.*`."""

    bn_pairs = (("conv", "bn"),)

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = FoldableConv2d(
            in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv.forward_bn(x, self.bn), inplace=True)


class BasicBlock(nn.Module):
    """ResNet basic block; the ReLU comes after the residual add."""

    bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1"))

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = FoldableConv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = FoldableConv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                FoldableConv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = F.relu(self.conv1.forward_bn(x, self.bn1), inplace=True)
        residual = self.conv2.forward_bn(residual, self.bn2)
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample[0].forward_bn(x, self.downsample[1])
        # In place on the fresh conv/BN output (neither op needs its output for backward):
        # one full-size allocation fewer per block.
        return F.relu(residual.add_(shortcut), inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    bn_pairs = (("conv1", "bn1"),)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = FoldableConv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = F.relu(self.conv1.forward_bn(x, self.bn1), inplace=True)
        x = self.layer1(self.maxpool(x))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """ConvBNReLU, then a channel attention from the global average: feat * sigmoid(BN(conv1x1))."""

    bn_pairs = (("conv_atten", "bn_atten"),)

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 3)
        self.conv_atten = FoldableConv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)
        self.sigmoid_atten = nn.Sigmoid()  # a module so a hook can read the attention vector

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        atten = feat.mean(dim=(2, 3), keepdim=True)
        atten = self.sigmoid_atten(self.conv_atten.forward_bn(atten, self.bn_atten))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 with ARMs on the 1/16 and 1/32 features, merged top-down."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        # Global context, a 1x1 vector: upstream's 'nearest' resize to feat32's size = broadcast.
        avg = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + avg
        # Legacy 'nearest' (floor(dst * in / out)), not 'nearest-exact': they differ on
        # non-square inputs whose feature sizes do not divide (e.g. 5x7 -> 9x13).
        feat32_up = F.interpolate(feat32_sum, size=feat16.shape[-2:], mode="nearest")
        feat_cp16 = self.conv_head32(feat32_up)
        feat16_sum = self.arm16(feat16) + feat_cp16
        feat16_up = F.interpolate(feat16_sum, size=feat8.shape[-2:], mode="nearest")
        feat_cp8 = self.conv_head16(feat16_up)
        return feat8, feat_cp8, feat_cp16


class FeatureFusionModule(nn.Module):
    """Fuses the 1/8 backbone feature (in place of a spatial path) with the context feature."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, 1)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, feat_sp: Tensor, feat_cp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([feat_sp, feat_cp], dim=1))  # spatial feature first
        atten = feat.mean(dim=(2, 3), keepdim=True)
        atten = self.sigmoid(self.conv2(F.relu(self.conv1(atten))))
        return torch.addcmul(feat, feat, atten)  # feat * atten + feat


class BiSeNetOutput(nn.Module):
    """Segmentation head: 3x3 ConvBNReLU then a 1x1 classifier without bias."""

    def __init__(self, in_ch: int, mid_ch: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch, 3)
        self.conv_out = nn.Conv2d(mid_ch, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """zllrunning face-parsing BiSeNet (ResNet-18 context path, no spatial path).

    `forward(x)` returns `(feat_out, feat_out16, feat_out32)`, the logits of the main head and
    of the two auxiliary heads, each upsampled to the input size (bilinear, align_corners=True),
    in eval and in train mode alike. `feat_out16` comes from the 1/8 context feature and
    `feat_out32` from the 1/16 one (upstream's names). `x` is ImageNet-normalised RGB; `parse`
    does that preprocessing for [-1, 1] images.

    For faster frozen inference call `fold_bn()`: every BatchNorm is folded into its conv (eval
    mode only; the state_dict is unchanged; `train()` undoes it and loading re-folds).
    Use `model.to(memory_format=torch.channels_last)` with channels_last inputs on CPU.
    """

    def __init__(self, n_classes: int = 19) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)
        self.register_buffer(
            "imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        self._bn_folded = False
        self.register_load_state_dict_post_hook(_refold_after_load)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = x.shape[-2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        feat_fuse = self.ffm(feat_res8, feat_cp8)
        outs = (self.conv_out(feat_fuse), self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))
        return tuple(  # type: ignore[return-value]
            F.interpolate(o, size=size, mode="bilinear", align_corners=True) for o in outs
        )

    def main_logits_lowres(self, x: Tensor) -> Tensor:
        """Logits of the main head at 1/8 of the input size (skips the auxiliary heads)."""
        feat_res8, feat_cp8, _ = self.cp(x)
        return self.conv_out(self.ffm(feat_res8, feat_cp8))

    @torch.no_grad()
    def parse(self, images: Tensor, size: int | None = PARSE_SIZE) -> Tensor:
        """Label map `[B, H, W]` int64 (CELEBAMASK_CLASSES ids) for RGB images in [-1, 1].

        Preprocessing as the checkpoint was trained: [-1, 1] -> [0, 1] -> ImageNet mean/std,
        resized to `size` x `size` (bilinear, antialiased when shrinking; `size=None` keeps the
        input size). The main head's logits are upsampled to `size` exactly as upstream
        (bilinear, align_corners=True) and, when the input had another size, resized back to
        it bilinearly before the argmax, so labels follow the input's geometry (smoother than
        resizing a label map with nearest). Only the main head is computed.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"BiSeNet.parse expects [B, 3, H, W] RGB, got {tuple(images.shape)}")
        in_size = images.shape[-2:]
        x = ((images + 1.0) * 0.5 - self.imagenet_mean) / self.imagenet_std
        work_size = in_size if size is None else torch.Size((size, size))
        if work_size != in_size:
            shrink = work_size[0] < in_size[0] or work_size[1] < in_size[1]
            x = F.interpolate(
                x, size=work_size, mode="bilinear", align_corners=False, antialias=shrink
            )
        logits = F.interpolate(
            self.main_logits_lowres(x), size=work_size, mode="bilinear", align_corners=True
        )
        if work_size != in_size:
            shrink = in_size[0] < work_size[0] or in_size[1] < work_size[1]
            logits = F.interpolate(
                logits, size=in_size, mode="bilinear", align_corners=False, antialias=shrink
            )
        return logits.argmax(dim=1)

    def _bn_pairs(self) -> Iterator[tuple[FoldableConv2d, nn.BatchNorm2d]]:
        for module in self.modules():
            for conv_name, bn_name in getattr(module, "bn_pairs", ()):
                conv = module.get_submodule(conv_name) if _has(module, conv_name) else None
                if conv is not None:
                    yield conv, module.get_submodule(bn_name)

    def fold_bn(self) -> BiSeNet:
        """Fold every BatchNorm into its conv for eval inference (1 conv instead of conv + BN).

        Puts the model in eval mode. Numerically equivalent up to float rounding (~2e-5 on
        logits of magnitude ~7). The state_dict keeps the checkpoint layout.
        """
        self.eval()
        for conv, bn in self._bn_pairs():
            conv.fold(bn)
        self._bn_folded = True
        return self

    fuse = fold_bn

    def unfold_bn(self) -> BiSeNet:
        """Drop the folded parameters: convs and BatchNorms run separately again."""
        for conv, _ in self._bn_pairs():
            conv.unfold()
        self._bn_folded = False
        return self

    def train(self, mode: bool = True) -> BiSeNet:
        # Folded weights freeze the running statistics: training must see the real BatchNorms.
        if mode and self._bn_folded:
            self.unfold_bn()
        return super().train(mode)


def _has(module: nn.Module, dotted: str) -> bool:
    try:
        module.get_submodule(dotted)
    except AttributeError:
        return False
    return True


def _refold_after_load(module: nn.Module, incompatible_keys) -> None:
    # New weights invalidate folded copies of the old ones.
    if getattr(module, "_bn_folded", False):
        module.fold_bn()
