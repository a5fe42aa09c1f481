"""PairSynthesizer: the synthesis stages composed into (src, tgt) training pairs, batched.

generator -> mixer -> segmenter -> masks -> background stylizer -> composite X_fb -> colour
reflection X_cr -> CutFace -> paired crop/flip (docs/method.md §1-3, docs/interfaces.md).
Pair `i` is a pure function of `(base_seed, i)` and the configuration.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from portrait_toon.synthesis.augment import paired_crop_flip, sample_crop_params
from portrait_toon.synthesis.color import REFLECTION_MODES, reflect_skin_tone
from portrait_toon.synthesis.cutface import paste_tiles, sample_cutface
from portrait_toon.synthesis.landscapes import LandscapeBank
from portrait_toon.synthesis.latents import pair_seed
from portrait_toon.synthesis.parsing import (
    HEAD_CLASS_IDS,
    SKIN_CLASS_IDS,
    class_mask,
    erode,
    feather,
    head_mask,
    scaled_px,
    skin_mask,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "PairSynthesizer"]

# Every key the five augmentation dicts accept, with its default (conf/augmentation/default.yaml
# documents them). Sizes in px are at `reference_resolution` (short side) and scale with the
# image, so one config serves 64 px tests and 1024 px runs.
DEFAULTS: dict[str, dict[str, Any]] = {
    "full_body": {
        # true: X_fb = X_cdsm * M_head + B(X_src) * (1 - M_head) (full-body aware synthesis);
        # false: the mixer's whole frame is the target (the paper's two-stage baseline).
        "enabled": True,
    },
    "head_mask": {
        "classes": list(HEAD_CLASS_IDS),
        "dilate": 4.0,
        "feather": 4.0,
        "reference_resolution": 256,
    },
    "color_reflection": {
        "enabled": True,
        "alpha": [1.0, 1.0, 1.0],
        "min_skin_fraction": 0.002,
        "target_skin": "parse",
        "mode": "mean",
        "skin_classes": list(SKIN_CLASS_IDS),
        "erode": 3.0,
        "shift_region": "character_head",
        "shift_feather": 1.5,
        "reference_resolution": 256,
    },
    "cutface": {
        "enabled": True,
        "p": 0.3,
        "max_faces": 4,
        "side_range": [0.15, 0.5],
        "landscape_dir": None,
        "feather": 2.0,
        "max_tries": 50,
        "content_scale_range": [1.2, 1.6],
        "content_shift": 0.1,
        "reference_resolution": 256,
    },
    "crop": {
        "enabled": True,
        "scale_range": [0.8, 1.0],
        "flip": True,
    },
}

TARGET_SKIN_CHOICES = ("parse", "eroded")
SHIFT_REGION_CHOICES = ("character_head", "head_mask")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dict/list (hydra passes DictConfig/ListConfig kwargs)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _merge_options(group: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of `group` updated with `given`; an unknown key is an error that names it."""
    options = copy.deepcopy(DEFAULTS[group])
    given = _plain(given) or {}
    if not isinstance(given, Mapping):
        raise TypeError(f"augmentation.{group} must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise ValueError(
            f"augmentation.{group}: unknown key(s) {unknown}; allowed keys: {sorted(options)} "
            "(see conf/augmentation/default.yaml)"
        )
    options.update({key: _plain(value) for key, value in given.items()})
    return options


def _resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-2] > size or images.shape[-1] > size
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )


def _resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    if labels.shape[-2:] == (size, size):
        return labels
    # Nearest neighbour keeps class ids valid (no blending of ids).
    resized = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")
    return resized[:, 0].round().to(labels.dtype)


class PairSynthesizer(nn.Module):
    """Synthetic training pairs (X_src, X_cr) from seeds, per docs/interfaces.md.

    `generator`, `mixer`, `segmenter` and `bg_stylizer` are the parts picked by the config
    groups; the five dicts mirror `conf/augmentation/*.yaml` (unknown keys raise). All parts
    are frozen and kept in eval mode; the synthesizer runs on the device of its parts.
    """

    def __init__(
        self,
        generator: nn.Module,
        mixer: nn.Module,
        segmenter: nn.Module,
        bg_stylizer: nn.Module,
        *,
        resolution: int,
        base_seed: int,
        full_body: Mapping[str, Any] | None = None,
        head_mask: Mapping[str, Any] | None = None,
        color_reflection: Mapping[str, Any] | None = None,
        cutface: Mapping[str, Any] | None = None,
        crop: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if int(resolution) <= 0:
            raise ValueError(f"PairSynthesizer: resolution must be positive, got {resolution}")
        self.generator = generator
        self.mixer = mixer
        self.segmenter = segmenter
        self.bg_stylizer = bg_stylizer
        self.resolution = int(resolution)
        self.base_seed = int(base_seed)
        self.full_body_options = _merge_options("full_body", full_body)
        self.head_mask_options = _merge_options("head_mask", head_mask)
        self.color_options = _merge_options("color_reflection", color_reflection)
        self.cutface_options = _merge_options("cutface", cutface)
        self.crop_options = _merge_options("crop", crop)
        self._validate()
        # An empty buffer tells which device the synthesizer was moved to, even when every
        # part is parameter-free (the embedded world, the classical stylizer).
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        self._landscape_bank: LandscapeBank | None = None
        self.requires_grad_(False)
        self.train(False)

    def _validate(self) -> None:
        if not isinstance(self.full_body_options["enabled"], bool):
            raise ValueError(
                "augmentation.full_body.enabled must be true or false, got "
                f"{self.full_body_options['enabled']!r}"
            )
        color = self.color_options
        if color["target_skin"] not in TARGET_SKIN_CHOICES:
            raise ValueError(
                f"augmentation.color_reflection.target_skin must be one of "
                f"{TARGET_SKIN_CHOICES}, got {color['target_skin']!r}"
            )
        if len(color["alpha"]) != 3:
            raise ValueError(
                f"augmentation.color_reflection.alpha needs 3 values (L, a, b), "
                f"got {color['alpha']}"
            )
        cut = self.cutface_options
        if not 0.0 <= float(cut["p"]) <= 1.0:
            raise ValueError(f"augmentation.cutface.p must be in [0, 1], got {cut['p']}")
        if int(cut["max_faces"]) < 1:
            raise ValueError(f"augmentation.cutface.max_faces must be >= 1, got {cut['max_faces']}")
        if color["shift_region"] not in SHIFT_REGION_CHOICES:
            raise ValueError(
                f"augmentation.color_reflection.shift_region must be one of "
                f"{SHIFT_REGION_CHOICES}, got {color['shift_region']!r}"
            )
        if color["mode"] not in REFLECTION_MODES:
            raise ValueError(
                f"augmentation.color_reflection.mode must be one of {REFLECTION_MODES}, "
                f"got {color['mode']!r}"
            )
        # Build one mask / tile plan / crop now so that a bad class id, range or folder fails
        # at construction rather than mid-training.
        probe = torch.zeros(1, 2, 2, dtype=torch.int64)
        class_mask(probe, self.head_mask_options["classes"])
        class_mask(probe, color["skin_classes"])
        if cut["enabled"]:
            sample_cutface(
                0,
                (self.resolution, self.resolution),
                p=1.0,
                max_faces=int(cut["max_faces"]),
                side_range=cut["side_range"],
                max_tries=int(cut["max_tries"]),
                content_scale_range=cut["content_scale_range"],
                content_shift=float(cut["content_shift"]),
            )
            landscape_dir = cut["landscape_dir"]
            if landscape_dir is not None and not Path(landscape_dir).is_dir():
                raise FileNotFoundError(
                    f"augmentation.cutface.landscape_dir {landscape_dir} is not a directory; "
                    "point it to a folder of landscape photos or set it to null for the "
                    "built-in ones"
                )
        if self.crop_options["enabled"]:
            sample_crop_params(torch.zeros(1, dtype=torch.int64), self.crop_options["scale_range"])

    def train(self, mode: bool = True) -> PairSynthesizer:
        """The synthesizer is a frozen data source: its parts always stay in eval mode."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def landscape_bank(self) -> LandscapeBank:
        """Landscapes used when `forward` gets none (built once, on first use)."""
        if self._landscape_bank is None:
            self._landscape_bank = LandscapeBank(self.cutface_options["landscape_dir"])
        return self._landscape_bank

    def _px(self, value: float, reference: int | None) -> float:
        return scaled_px(value, (self.resolution, self.resolution), reference)

    def _landscapes(
        self, index: torch.Tensor, given: torch.Tensor | None, chosen: torch.Tensor
    ) -> torch.Tensor:
        """Float [-1, 1] landscapes at `resolution` for the chosen pairs."""
        size = (self.resolution, self.resolution)
        if given is None:
            seeds = pair_seed(self.base_seed, index[chosen], "landscape")
            pictures = self.landscape_bank.sample_batch(seeds, size)
        else:
            if given.dim() != 4 or given.shape[0] != index.shape[0] or given.shape[1] != 3:
                raise ValueError(
                    f"landscapes must be uint8 [B={index.shape[0]}, 3, h, w], "
                    f"got {given.dtype} {tuple(given.shape)}"
                )
            pictures = given[chosen.to(given.device)]
        pictures = pictures.to(self.device)
        if pictures.dtype == torch.uint8:
            pictures = pictures.float() / 127.5 - 1.0
        return _resize_images(pictures.float(), self.resolution)

    # -- the stages (each batched; `forward` chains them; benchmarks time them one by one) ----

    def render(
        self, index: torch.Tensor, parse_character: bool = False
    ) -> dict[str, torch.Tensor | None]:
        """Stage 1 (docs/method.md §1): photo X_src, character X_cdsm and parse labels at
        `resolution`; `character_labels` when colour reflection parses the character or
        `parse_character` asks for it (None otherwise).

        Parsers see the images at the generator's resolution (the embedded world's exact
        labels only exist there); everything is resized to `resolution` afterwards.
        """
        device = self.device
        color = self.color_options
        raw_photo, latents = self.generator.sample(pair_seed(self.base_seed, index, "latent"))
        raw_character = self.mixer.render(latents)
        labels = self.segmenter.parse(raw_photo, latents, domain="source")
        character_labels = None
        if parse_character or (color["enabled"] and color["target_skin"] == "parse"):
            character_labels = self.segmenter.parse(raw_character, latents, domain="character")
            character_labels = _resize_labels(character_labels.to(device), self.resolution)
        return {
            "photo": _resize_images(raw_photo.to(device).float(), self.resolution),
            "character": _resize_images(raw_character.to(device).float(), self.resolution),
            "labels": _resize_labels(labels.to(device), self.resolution),
            "character_labels": character_labels,
        }

    def masks(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M_head (dilated, feathered) and M_skin of the source parse."""
        head_opts = self.head_mask_options
        head = head_mask(
            labels,
            head_opts["classes"],
            dilate_px=head_opts["dilate"],
            feather_px=head_opts["feather"],
            reference_resolution=head_opts["reference_resolution"],
        )
        return head, skin_mask(labels, self.color_options["skin_classes"])

    def reflect(
        self,
        composite: torch.Tensor,
        photo: torch.Tensor,
        character: torch.Tensor,
        head: torch.Tensor,
        skin: torch.Tensor,
        character_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """Stage 3 (docs/method.md §2): colour reflection X_fb -> X_cr (identity when disabled)."""
        color = self.color_options
        if not color["enabled"]:
            return composite
        if character_labels is not None:
            target_skin = skin_mask(character_labels, color["skin_classes"])
        else:
            # Proxy: the source skin shrunk away from its border, where the character's
            # geometry may differ slightly from the photo's.
            target_skin = erode(skin, self._px(color["erode"], color["reference_resolution"]))
        shift_weight = head
        if color["shift_region"] == "character_head" and character_labels is not None:
            # M_head's dilation band holds stylised background wherever the character has
            # none; shifting it by the skin offset would paint a dark/light halo around the
            # head. Only the character's own head (softly edged) inside M_head is shifted.
            character_head = class_mask(character_labels, self.head_mask_options["classes"])
            soft_edge = feather(
                character_head, self._px(color["shift_feather"], color["reference_resolution"])
            )
            shift_weight = head * torch.maximum(character_head, soft_edge)
        return reflect_skin_tone(
            composite,
            photo,
            shift_weight,
            skin,
            target_skin,
            alpha=color["alpha"],
            min_skin_fraction=color["min_skin_fraction"],
            mode=color["mode"],
            target=character,
        )

    def cutface(
        self,
        index: torch.Tensor,
        photo: torch.Tensor,
        corrected: torch.Tensor,
        head: torch.Tensor,
        skin: torch.Tensor,
        labels: torch.Tensor,
        landscapes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 4 (docs/method.md §3): `(src, tgt, head, skin, is_cutface)`, CutFace pairs replaced
        by tiles on L / B(L). `index` is the CPU int64 index of the pairs."""
        is_cutface = torch.zeros(index.shape[0], dtype=torch.bool)
        cut = self.cutface_options
        if not cut["enabled"] or float(cut["p"]) <= 0:
            return photo, corrected, head, skin, is_cutface
        plans = [
            sample_cutface(
                int(seed),
                (self.resolution, self.resolution),
                p=float(cut["p"]),
                max_faces=int(cut["max_faces"]),
                side_range=cut["side_range"],
                max_tries=int(cut["max_tries"]),
                content_scale_range=cut["content_scale_range"],
                content_shift=float(cut["content_shift"]),
            )
            for seed in pair_seed(self.base_seed, index, "cutface").tolist()
        ]
        is_cutface = torch.tensor([plan is not None for plan in plans], dtype=torch.bool)
        if not bool(is_cutface.any()):
            return photo, corrected, head, skin, is_cutface
        chosen = is_cutface.nonzero()[:, 0].tolist()
        scenery = self._landscapes(index, landscapes, is_cutface)
        scenery_toon = self.bg_stylizer(scenery)
        src, tgt, out_head, out_skin = photo.clone(), corrected.clone(), head.clone(), skin.clone()
        feather = self._px(cut["feather"], cut["reference_resolution"])
        for row, pair in enumerate(chosen):
            pasted = paste_tiles(
                photo[pair : pair + 1],
                corrected[pair : pair + 1],
                head[pair : pair + 1],
                skin[pair : pair + 1],
                scenery[row : row + 1],
                scenery_toon[row : row + 1],
                plans[pair],
                feather_px=feather,
                labels=labels[pair : pair + 1],
            )
            src[pair], tgt[pair], out_head[pair], out_skin[pair] = (t[0] for t in pasted)
        return src, tgt, out_head, out_skin, is_cutface

    def crop(
        self, index: torch.Tensor, tensors: list[torch.Tensor], crop_round: int = 0
    ) -> list[torch.Tensor]:
        """Stage 5: the pairs' random scale/crop/flip, identical on every tensor.

        `crop_round` r > 0 draws another crop of the same pairs (stream `crop.r`): a pair
        reused for several steps (data.reuse) is seen through a different crop each time."""
        if not self.crop_options["enabled"]:
            return list(tensors)
        stream = "crop" if crop_round == 0 else f"crop.{int(crop_round)}"
        params = sample_crop_params(
            pair_seed(self.base_seed, index, stream),
            self.crop_options["scale_range"],
            flip=bool(self.crop_options["flip"]),
        )
        return paired_crop_flip(tensors, params)

    @torch.no_grad()
    def forward(
        self,
        index: torch.Tensor,
        landscapes: torch.Tensor | None = None,
        return_stages: bool = False,
        crop_round: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Pairs for the int64 indices `index` [B]; see docs/interfaces.md for the keys.

        `crop_round`: which of the pairs' random crops (0 = the pair as made once; see
        `crop`). `uncropped(...)` then `cropped(...)` is the same in two steps, so that the
        expensive part can be kept and re-cropped."""
        result = self.uncropped(index, landscapes, return_stages=return_stages)
        return self.cropped(result, crop_round)

    @torch.no_grad()
    def cropped(self, uncropped: dict[str, torch.Tensor], crop_round: int = 0) -> dict:
        """The pairs of `uncropped(...)` through their crop number `crop_round`, clamped."""
        index_cpu = uncropped["index"].detach().to("cpu", torch.int64)
        keys = ("src", "tgt", "head_mask", "skin_mask")
        src, tgt, head, skin = self.crop(index_cpu, [uncropped[k] for k in keys], crop_round)
        return {
            **uncropped,
            "src": src.clamp(-1.0, 1.0),
            "tgt": tgt.clamp(-1.0, 1.0),
            "head_mask": head.clamp(0.0, 1.0),
            "skin_mask": skin.clamp(0.0, 1.0),
        }

    @torch.no_grad()
    def uncropped(
        self,
        index: torch.Tensor,
        landscapes: torch.Tensor | None = None,
        return_stages: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Stages 1-4 (everything but the crop): `forward`'s keys before `cropped`."""
        index = torch.as_tensor(index)
        if index.dim() != 1 or index.dtype.is_floating_point:
            raise ValueError(
                f"index must be a 1-D integer tensor, got {index.dtype} {tuple(index.shape)}"
            )
        index_cpu = index.detach().to("cpu", torch.int64)

        # The stages include the character's parse: its skin is where the target, and so a
        # faithful F(x), has skin (what the skin-tone metric measures the output over).
        rendered = self.render(index_cpu, parse_character=return_stages)
        photo, character, labels = rendered["photo"], rendered["character"], rendered["labels"]
        stage_head, stage_skin = self.masks(labels)
        # Stage 2: stylised background and the composite X_fb (docs/method.md, section 1).
        # Without it (the two-stage baseline) the target is the mixer's whole frame; the masks
        # are still made, for colour reflection, CutFace and the metrics.
        full_body = self.full_body_options["enabled"]
        background = self.bg_stylizer(photo) if full_body or return_stages else None
        if full_body:
            composite = character * stage_head + background * (1.0 - stage_head)
        else:
            composite = character
        corrected = self.reflect(
            composite, photo, character, stage_head, stage_skin, rendered["character_labels"]
        )
        src, tgt, out_head, out_skin, is_cutface = self.cutface(
            index_cpu, photo, corrected, stage_head, stage_skin, labels, landscapes
        )
        result = {
            "src": src,
            "tgt": tgt,
            "head_mask": out_head,
            "skin_mask": out_skin,
            "is_cutface": is_cutface.to(self.device),
            "index": index_cpu.to(self.device),
        }
        if return_stages:
            result.update(
                photo=photo,
                labels=labels,
                character=character,
                stage_head_mask=stage_head,
                stage_skin_mask=stage_skin,
                character_labels=rendered["character_labels"],
                character_skin_mask=skin_mask(
                    rendered["character_labels"], self.color_options["skin_classes"]
                ),
                background=background,
                composite=composite,
                corrected=corrected,
            )
        return result

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, base_seed={self.base_seed}"
