"""Mixers: the cartoon of a source latent. Cross-domain style mixing (CDSM, docs/method.md
§1.3), Toonify layer swapping (the baseline, docs/method.md §0) and the identity (ablation).

Each takes the source generator (`sources.StyleGAN2Generator`) and renders from the W+ latents
its `sample` returns: `render(wplus) -> images [B, 3, size, size]` in [-1, 1] at the
generator's size (the pipeline resizes). Everything is built once at construction (frozen,
eval); `render` only computes styles and runs one generator.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from portrait_toon.checkpoints import MissingWeightsError, load_state_dict_file
from portrait_toon.nets.stylegan2 import Generator
from portrait_toon.synthesis.sources import (
    StyleGAN2Generator,
    build_stylegan2,
    resolve_checkpoint,
    set_bf16,
)

log = logging.getLogger(__name__)

__all__ = [
    "CDSMMixer",
    "LayerPlan",
    "LayerSwapMixer",
    "NoMixer",
    "layer_resolution",
    "load_character_code",
]

TARGET_HOW_TO_GET = (
    "G_t is the source StyleGAN2 fine-tuned on your character's faces: "
    "`python train.py experiment=finetune_target data.image_dir=...` writes <run folder>/G_t.pt; "
    "set mixer.target_checkpoint to that file (or copy it into paths.weights_dir)."
)
CODE_HOW_TO_GET = (
    "w_c is written by step 2 of the README's `Your own character` recipe: `python synthesize.py "
    "task=character +character=default experiment=webtoonme_512 "
    "character.image_dir=/data/my_character character.out_dir=weights` (writes "
    "<character.out_dir>/w_c.pt); set mixer.character_code to that file (or copy it into "
    "paths.weights_dir), or mixer.allow_latent_avg_code=true to use G_t's latent_avg instead."
)
BLEND_MODES = ("hard", "sigmoid")


def _source_generator(source: nn.Module, what: str) -> StyleGAN2Generator:
    if not isinstance(source, StyleGAN2Generator):
        raise TypeError(
            f"{what} renders from StyleGAN2 W+ latents: it needs generator=stylegan2 "
            f"(sources.StyleGAN2Generator), got {type(source).__name__}"
        )
    return source


def layer_resolution(name: str) -> int:
    """Output resolution of a synthesis state_dict entry (`convs.5.conv.weight` -> 32).

    input/conv1/to_rgb1 -> 4; convs.k -> 2^(k//2 + 3); to_rgbs.j -> 2^(j + 3);
    noises.noise_i -> 2^((i + 5) // 2). Mapping entries (`style.*`) have none: ValueError.
    """
    parts = name.split(".")
    head = parts[0]
    if head in ("input", "conv1", "to_rgb1"):
        return 4
    if head == "convs":
        return 2 ** (int(parts[1]) // 2 + 3)
    if head == "to_rgbs":
        return 2 ** (int(parts[1]) + 3)
    if head == "noises":
        return 2 ** ((int(parts[1].removeprefix("noise_")) + 5) // 2)
    raise ValueError(f"{name!r} is not a synthesis-network entry (mapping or unknown)")


def load_character_code(
    code: str | Path | None,
    *,
    weights_dir: str | Path | None,
    n_latent: int,
    style_dim: int,
) -> Tensor:
    """w_c [n_latent, style_dim] from a character-task file (`{"w_c": ...}`) or a bare tensor
    file; a single W [style_dim] is broadcast to every W+ entry."""
    path = resolve_checkpoint(
        code, weights_dir, what="mixer.character_code (w_c)", how_to_get=CODE_HOW_TO_GET
    )
    obj: Any
    if path.suffix == ".safetensors":
        obj = load_state_dict_file(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets one clear message
            raise ValueError(f"{path}: not a readable character-code file ({error})") from None
    w_c = obj.get("w_c") if isinstance(obj, dict) else obj
    if not isinstance(w_c, Tensor):
        raise ValueError(
            f"{path}: expected a tensor or a dict with 'w_c' (as task=character writes), got "
            f"{type(obj).__name__} with keys {list(obj)[:8] if isinstance(obj, dict) else '-'}"
        )
    w_c = w_c.detach().float()
    if w_c.shape == (1, n_latent, style_dim):
        w_c = w_c[0]
    if w_c.shape == (style_dim,) or w_c.shape == (1, style_dim):
        w_c = w_c.reshape(1, style_dim).expand(n_latent, -1)
    if w_c.shape != (n_latent, style_dim):
        raise ValueError(
            f"{path}: w_c has shape {list(w_c.shape)}; this generator needs [{n_latent}, "
            f"{style_dim}] (W+) or [{style_dim}] (W). Was it projected into another G_t?"
        )
    return w_c.contiguous()


@dataclass(frozen=True)
class LayerPlan:
    """Where one modulated layer of the CDSM renderer takes its style and its weights."""

    name: str  # state_dict prefix, e.g. "convs.5"
    kind: str  # "conv" | "torgb"
    resolution: int
    w_index: int  # W+ entry that drives it
    style_from: str  # "source" (A^s(w)) | "character" (A^t(w_c))
    weights_from: str  # "source" (G_s) | "target" (G_t)


class CDSMMixer(nn.Module):
    """Cross-domain style mixing (docs/method.md §1.3).

    For every modulated layer l of the style order (`Generator.modulated_layers()`):
    - style: s_l = A^t_l(w_c[i_l]) (G_t's affine on the character code) when the layer's W+
      index i_l >= `mixing_level` m, or, with `replace_torgb`, for every ToRGB layer;
      otherwise s_l = A^s_l(w[i_l]) (G_s's affine on the pair's latent). The mixing level
      is a W+ index: conv layers are numbered like W+ (conv1 = 0, convs.k = k + 1), ToRGBs
      share the index of the next up-sampling conv (latent_index_of_layer). At 1024 px,
      m = 6 puts the second 32 px conv and everything finer on the character's styles.
    - weights: the renderer is G_s whose StyledConv/ToRGB modules at resolution >=
      `swap_resolution` (r_swap) are G_t's (conv weights, noise strength, biases; also the
      constant input and the stored noise maps of those resolutions).
    Character styles are constant: computed once here. The hybrid renderer (a copy of G_s
    with G_t's modules) is built once; G_t itself is not kept.

    Args:
        source: the source generator (generator=stylegan2; Hydra passes `${generator}`).
        target_checkpoint: G_t, a rosinality file `{g_ema, latent_avg, ...}` as
            experiment=finetune_target writes it (path or name in `weights_dir`); same
            architecture as the source.
        character_code: w_c file from `synthesize.py task=character` (path or name in
            `weights_dir`); None or missing + `allow_latent_avg_code` -> G_t's latent_avg.
        mixing_level, swap_resolution, replace_torgb: m, r_swap, toRGB style replacement.
        allow_random_init / init_seed: random G_t when its file is missing (debug=tiny).
        bf16: run the renderer in bfloat16 (images returned as float32); for GPUs.
    """

    def __init__(
        self,
        source: nn.Module,
        target_checkpoint: str | None = "G_t.pt",
        weights_dir: str | None = None,
        character_code: str | None = "w_c.pt",
        allow_latent_avg_code: bool = False,
        mixing_level: int = 6,
        swap_resolution: int = 32,
        replace_torgb: bool = True,
        allow_random_init: bool = False,
        init_seed: int = 1,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        src = _source_generator(source, "mixer=cdsm")
        g_s = src.generator
        if not 0 <= int(mixing_level) <= g_s.n_latent:
            raise ValueError(
                f"mixer.mixing_level must be a W+ index in 0..{g_s.n_latent}, got {mixing_level}"
            )
        if int(swap_resolution) < 1:
            raise ValueError(f"mixer.swap_resolution must be positive, got {swap_resolution}")
        self.render_size = src.render_size
        self.mixing_level = int(mixing_level)
        self.swap_resolution = int(swap_resolution)
        self.replace_torgb = bool(replace_torgb)
        self.bf16 = bool(bf16)

        g_t, latent_avg_t = build_stylegan2(
            target_checkpoint,
            weights_dir=weights_dir,
            arch=src.arch,
            allow_random_init=allow_random_init,
            init_seed=init_seed,
            what="mixer.target_checkpoint (G_t)",
            how_to_get=TARGET_HOW_TO_GET,
        )
        w_c = self._character_code(
            character_code, weights_dir, allow_latent_avg_code, latent_avg_t, g_t
        )
        self.register_buffer("w_c", w_c)

        self.plan = self._make_plan(g_s)
        # The renderer: G_s's synthesis network with G_t's modules at >= r_swap. The mapping
        # is dropped (styles come from W+ through the affines below).
        renderer = copy.deepcopy(g_s)
        renderer.style = nn.Sequential()
        for entry in self.plan:
            if entry.weights_from == "target":
                renderer.set_submodule(entry.name, copy.deepcopy(g_t.get_submodule(entry.name)))
        # The constant input and the stored noise maps belong to their resolution's block too.
        target_state = g_t.state_dict()
        with torch.no_grad():
            for name, tensor in renderer.state_dict(keep_vars=True).items():
                in_block = name.startswith(("input.", "noises."))
                if in_block and layer_resolution(name) >= self.swap_resolution:
                    tensor.copy_(target_state[name])
        self.renderer = renderer
        # G_s's affines for the layers styled from the pair's latent (the renderer's own
        # modules at >= r_swap carry G_t's affines, so they are kept apart).
        self.source_affines = nn.ModuleDict(
            {
                _key(e.name): copy.deepcopy(g_s.get_submodule(e.name).conv.modulation)
                for e in self.plan
                if e.style_from == "source"
            }
        )
        # Character styles A^t(w_c): constant, one [1, C] row per layer.
        with torch.no_grad():
            character_styles = g_t.get_styles(w_c.unsqueeze(0).to(next(g_t.parameters())))
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        for entry, style in zip(self.plan, character_styles):
            if entry.style_from == "character":
                name = f"character_style_{_key(entry.name)}"
                self.register_buffer(name, style.detach().to(dtype))
        if self.bf16:
            set_bf16(self.renderer)
            set_bf16(self.source_affines)
        self.requires_grad_(False)
        self.train(False)
        log.info(
            "CDSM: m=%d, r_swap=%d, replace_torgb=%s; character styles on %d of %d layers, "
            "G_t weights on %d",
            self.mixing_level,
            self.swap_resolution,
            self.replace_torgb,
            sum(e.style_from == "character" for e in self.plan),
            len(self.plan),
            sum(e.weights_from == "target" for e in self.plan),
        )

    def _character_code(
        self,
        code: str | None,
        weights_dir: str | None,
        allow_latent_avg_code: bool,
        latent_avg_t: Tensor,
        g_t: Generator,
    ) -> Tensor:
        if code is not None:
            try:
                return load_character_code(
                    code, weights_dir=weights_dir, n_latent=g_t.n_latent, style_dim=g_t.style_dim
                )
            except MissingWeightsError:
                if not allow_latent_avg_code:
                    raise
        elif not allow_latent_avg_code:
            raise MissingWeightsError(f"mixer.character_code is null. {CODE_HOW_TO_GET}")
        log.warning(
            "CDSM: no character code (%s); using G_t's latent_avg as w_c - the character's "
            "'average' look, not the projected one",
            code,
        )
        return latent_avg_t.reshape(1, -1).expand(g_t.n_latent, -1).contiguous()

    def _make_plan(self, g_s: Generator) -> list[LayerPlan]:
        index = g_s.latent_index_of_layer
        plan = []
        for layer in g_s.modulated_layers():
            w_index = index[layer.name]
            character = w_index >= self.mixing_level or (
                self.replace_torgb and layer.kind == "torgb"
            )
            plan.append(
                LayerPlan(
                    name=layer.name,
                    kind=layer.kind,
                    resolution=layer.resolution,
                    w_index=w_index,
                    style_from="character" if character else "source",
                    weights_from="target" if layer.resolution >= self.swap_resolution else "source",
                )
            )
        return plan

    def train(self, mode: bool = True) -> CDSMMixer:
        """Frozen: always in eval mode."""
        return super().train(False)

    def styles(self, wplus: Tensor) -> list[Tensor]:
        """The mixed styles [B, C_l] of every modulated layer, in style order."""
        batch = wplus.shape[0]
        styles = []
        for entry in self.plan:
            key = _key(entry.name)
            if entry.style_from == "character":
                styles.append(getattr(self, f"character_style_{key}").expand(batch, -1))
            else:
                styles.append(self.source_affines[key](wplus[:, entry.w_index]))
        return styles

    @torch.no_grad()
    def render(self, latents: Tensor) -> Tensor:
        """X_cdsm for the source W+ latents [B, n_latent, style_dim]: [-1, 1] images."""
        wplus = latents.to(self.w_c.device, self.renderer.input.input.dtype)
        images = self.renderer.synthesis_from_styles(
            self.styles(wplus), max_resolution=self.render_size
        )
        return images.float().clamp_(-1.0, 1.0)

    def extra_repr(self) -> str:
        return (
            f"mixing_level={self.mixing_level}, swap_resolution={self.swap_resolution}, "
            f"replace_torgb={self.replace_torgb}"
        )


def _key(name: str) -> str:
    """A module/buffer name from a state_dict prefix (dots are not allowed there)."""
    return name.replace(".", "_")


class LayerSwapMixer(nn.Module):
    """Toonify layer blending (the paper's baseline): per synthesis parameter
    theta = alpha(res) * theta_t + (1 - alpha(res)) * theta_s, res the layer's resolution.

    `blend="hard"`: alpha = 1 for res >= swap_resolution, else 0. `blend="sigmoid"`:
    alpha = sigmoid((log2(res) - log2(swap_resolution) + 0.5) / blend_width), a soft switch
    centred between swap_resolution / 2 and swap_resolution (width in octaves; -> hard as
    blend_width -> 0). The blended generator is built once; `render(wplus)` runs it on the
    source W+ (the mapping is G_s's: the latents come from the source). alpha = 0 everywhere
    (swap_resolution above the size) reproduces G_s exactly, alpha = 1 (hard, swap_resolution
    <= 4) reproduces G_t. `bf16` runs it in bfloat16 (for GPUs).
    """

    def __init__(
        self,
        source: nn.Module,
        target_checkpoint: str | None = "G_t.pt",
        weights_dir: str | None = None,
        swap_resolution: int = 32,
        blend: str = "hard",
        blend_width: float = 0.5,
        allow_random_init: bool = False,
        init_seed: int = 1,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        src = _source_generator(source, "mixer=layer_swap")
        if blend not in BLEND_MODES:
            raise ValueError(f"mixer.blend must be one of {BLEND_MODES}, got {blend!r}")
        if blend == "sigmoid" and float(blend_width) <= 0:
            raise ValueError(f"mixer.blend_width must be > 0, got {blend_width}")
        if int(swap_resolution) < 1:
            raise ValueError(f"mixer.swap_resolution must be positive, got {swap_resolution}")
        self.render_size = src.render_size
        self.swap_resolution = int(swap_resolution)
        self.blend = blend
        self.blend_width = float(blend_width)
        self.bf16 = bool(bf16)
        g_t, _ = build_stylegan2(
            target_checkpoint,
            weights_dir=weights_dir,
            arch=src.arch,
            allow_random_init=allow_random_init,
            init_seed=init_seed,
            what="mixer.target_checkpoint (G_t)",
            how_to_get=TARGET_HOW_TO_GET,
        )
        blended = copy.deepcopy(src.generator)
        blended.style = nn.Sequential()  # renders from W+ only
        target_state = g_t.state_dict()
        with torch.no_grad():
            for name, tensor in blended.state_dict(keep_vars=True).items():
                alpha = self.alpha(layer_resolution(name))
                # alpha * t + (1 - alpha) * s is exactly s at alpha = 0 and t at alpha = 1.
                tensor.copy_(alpha * target_state[name] + (1.0 - alpha) * tensor)
        self.generator = set_bf16(blended) if self.bf16 else blended
        self.requires_grad_(False)
        self.train(False)

    def alpha(self, resolution: int) -> float:
        """The share of G_t in the parameters of a layer at `resolution`."""
        if self.blend == "hard":
            return 1.0 if resolution >= self.swap_resolution else 0.0
        x = (math.log2(resolution) - math.log2(self.swap_resolution) + 0.5) / self.blend_width
        return 1.0 / (1.0 + math.exp(-x))

    def train(self, mode: bool = True) -> LayerSwapMixer:
        """Frozen: always in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def render(self, latents: Tensor) -> Tensor:
        """The blended generator on the source W+ latents: [-1, 1] images."""
        constant = self.generator.input.input
        wplus = latents.to(constant.device, constant.dtype)
        images = self.generator.synthesis_from_styles(
            self.generator.get_styles(wplus), max_resolution=self.render_size
        )
        return images.float().clamp_(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"swap_resolution={self.swap_resolution}, blend={self.blend!r}"


class NoMixer(nn.Module):
    """mixer=none (ablation): the "cartoon" is the source image itself, G_s(W+)."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.source = _source_generator(source, "mixer=none")

    def train(self, mode: bool = True) -> NoMixer:
        return super().train(False)

    @torch.no_grad()
    def render(self, latents: Tensor) -> Tensor:
        return self.source.render(latents)
