"""The real face parser as a Segmenter: zllrunning's face-parsing BiSeNet (19 CelebAMask-HQ
classes) run at 512 px on the images, labels returned at the images' size.

`parse(images, latents=None, domain="source"|"character")` (docs/interfaces.md): a real parser
parses the pixels, so `latents` is ignored and `domain` only labels the call (the pipeline
parses the cartoon with `domain="character"` for colour reflection). `union_head_labels`
merges the two parses so M_head also covers the cartoon's head where CDSM moved its outline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portrait_toon.checkpoints import (
    MissingWeightsError,
    extract_state_dict,
    load_into,
    load_state_dict_file,
)
from portrait_toon.nets.bisenet import HEAD_CLASS_IDS, PARSE_SIZE, BiSeNet
from portrait_toon.synthesis.sources import (
    resize_images,
    resolve_checkpoint,
    seeded_init,
    set_bf16,
)

log = logging.getLogger(__name__)

__all__ = ["DOMAINS", "BiSeNetSegmenter", "union_head_labels"]

DOMAINS = ("source", "character")


def union_head_labels(
    source_labels: Tensor, character_labels: Tensor, head_classes: Sequence[int] = HEAD_CLASS_IDS
) -> Tensor:
    """Source labels, plus the character's head labels wherever the source has no head class.

    The head classes of the result are the union of both parses' (so a head mask built from
    it covers both outlines); inside the source head the source labels are kept (skin-tone
    statistics stay the photo's).
    """
    if source_labels.shape != character_labels.shape:
        raise ValueError(
            f"union_head_labels: label maps differ in shape {tuple(source_labels.shape)} vs "
            f"{tuple(character_labels.shape)}"
        )
    ids = torch.tensor(list(head_classes), dtype=source_labels.dtype, device=source_labels.device)
    take_character = torch.isin(character_labels, ids) & ~torch.isin(source_labels, ids)
    return torch.where(take_character, character_labels, source_labels)


class BiSeNetSegmenter(nn.Module):
    """Segmenter from the public face-parsing BiSeNet (`79999_iter.pth`, bare state_dict).

    Args:
        weights_dir: where `filename` is looked up (`paths.weights_dir`).
        filename: the checkpoint (a name in `weights_dir`, or a path).
        parse_size: side the parser runs at (the checkpoint was trained at 512); None = the
            images' own size. Labels always come back at the images' size (logits resized
            before the argmax, so labels follow the image geometry).
        allow_random_init: a missing file gives a randomly initialised parser (WARNING
            logged) instead of an error; smoke tests (debug=tiny) only.
        init_seed: seed of that random init.
        channels_last: run the net in channels_last (faster convs on CPU).
        bf16: run the net in bfloat16 (for GPUs). The image is then resized to parse_size in
            float32 and the labels come back to the image size by nearest neighbour.
    BatchNorms are folded into the convs (eval-only inference). Frozen, always eval.
    """

    def __init__(
        self,
        weights_dir: str | None = None,
        filename: str = "79999_iter.pth",
        parse_size: int | None = PARSE_SIZE,
        allow_random_init: bool = False,
        init_seed: int = 0,
        channels_last: bool = True,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        if parse_size is not None and int(parse_size) < 32:
            raise ValueError(
                f"segmenter.parse_size must be >= 32 (the net downsamples 32x) or null, "
                f"got {parse_size}"
            )
        with seeded_init(init_seed):
            self.net = BiSeNet(n_classes=19)
        try:
            path = resolve_checkpoint(filename, weights_dir, what="segmenter (face parser)")
        except MissingWeightsError:
            if not allow_random_init:
                raise
            log.warning(
                "segmenter: %s not found: RANDOMLY INITIALISED face parser (init_seed=%d); "
                "smoke tests only, the labels are meaningless",
                filename,
                init_seed,
            )
        else:
            state = extract_state_dict(load_state_dict_file(path))
            load_into(self.net, state, source=path, expected="face-parsing BiSeNet (19 classes)")
            log.info("segmenter: loaded %s", path)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.net.fold_bn()
        self.parse_size = None if parse_size is None else int(parse_size)
        self.bf16 = bool(bf16)
        if self.bf16:
            set_bf16(self.net)  # after folding: the folded weights are cast too
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> BiSeNetSegmenter:
        """A frozen parser: always in eval mode (keeps the folded BatchNorms)."""
        return super().train(False)

    @torch.no_grad()
    def parse(
        self, images: Tensor, latents: object | None = None, domain: str = "source"
    ) -> Tensor:
        """Face-parsing labels int64 [B, H, W] of [-1, 1] RGB images [B, 3, H, W]."""
        if domain not in DOMAINS:
            raise ValueError(f"segmenter.parse: domain must be one of {DOMAINS}, got {domain!r}")
        device = self.net.imagenet_mean.device
        images = images.to(device=device, dtype=torch.float32)
        if not self.bf16:
            images = images.contiguous(memory_format=self.memory_format)
            return self.net.parse(images, size=self.parse_size)
        # bf16: resize in float32 (antialiased resizing has no bf16 kernel on every device)
        size = images.shape[-2:]
        work = images if self.parse_size is None else resize_images(images, self.parse_size)
        work = work.to(torch.bfloat16).contiguous(memory_format=self.memory_format)
        labels = self.net.parse(work, size=None)
        if labels.shape[-2:] != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
        return labels.long()

    def extra_repr(self) -> str:
        return f"parse_size={self.parse_size}"
