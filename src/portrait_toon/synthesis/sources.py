"""The real source generator G_s (a rosinality StyleGAN2 checkpoint, e.g. FFHQ 1024) and the
loading/random-init rules every real synthesis part shares (mixers, segmenter).

`StyleGAN2Generator.sample(seeds)` draws z per pair from its seed (`latents.gaussian_latents`),
maps it to W, truncates towards `latent_avg` with psi, and renders with the generator's stored
noise, so pair i is the same on any device. It returns the images resized to the working
resolution and the W+ latents the mixers render from (docs/interfaces.md).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portrait_toon.checkpoints import (
    MissingWeightsError,
    load_into,
    load_stylegan2_checkpoint,
    resolve_weight,
)
from portrait_toon.nets.animegan import Generator as AnimeGANGenerator
from portrait_toon.nets.stylegan2 import Generator
from portrait_toon.synthesis.background import AnimeGANStylizer
from portrait_toon.synthesis.latents import gaussian_latents
from portrait_toon.weights_registry import KNOWN_WEIGHTS

log = logging.getLogger(__name__)

__all__ = [
    "FFHQ_ARCH",
    "AnimeGANBackground",
    "StyleGAN2Generator",
    "check_arch",
    "build_stylegan2",
    "mapping_mean",
    "resize_images",
    "resolve_checkpoint",
    "seeded_init",
    "set_bf16",
]

# rosinality's stylegan2-ffhq-config-f.pt (nets.stylegan2.Generator keyword arguments)
FFHQ_ARCH: dict[str, int] = {
    "size": 1024,
    "style_dim": 512,
    "n_mlp": 8,
    "channel_multiplier": 2,
    "channel_max": 512,
}
ARCH_KEYS = frozenset(FFHQ_ARCH) | {"lr_mlp"}


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (Hydra passes DictConfig kwargs)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_arch(arch: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """FFHQ defaults updated with `arch`; an unknown key is an error naming it."""
    given = dict(_plain(arch) or {})
    unknown = sorted(set(given) - ARCH_KEYS)
    if unknown:
        raise ValueError(f"{what}.arch: unknown key(s) {unknown}; allowed: {sorted(ARCH_KEYS)}")
    return {**FFHQ_ARCH, **given}


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Module construction inside draws its random init from `seed` (global RNG restored after).

    Two parts built from the same config with the same seed get identical random weights: the
    mixer's copy of G_s equals the source generator's even without a checkpoint (debug=tiny).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def set_bf16(module: nn.Module, keep_float32: Sequence[str] = ()) -> nn.Module:
    """Cast a frozen network to bfloat16 (weights and therefore activations), except the
    submodules named in `keep_float32` (e.g. StyleGAN2's mapping `style`, which is cheap and
    sets W precisely; they are never rounded through bf16).

    Whole-network bf16 rather than autocast: the networks' fused no-grad paths update
    activations in place, which autocast's mixed fp32/bf16 operands would break."""
    kept = {name: module.get_submodule(name) for name in keep_float32}
    for name in kept:
        module.set_submodule(name, nn.Identity())
    module.to(torch.bfloat16)
    for name, part in kept.items():
        module.set_submodule(name, part)
    return module


def resize_images(images: Tensor, size: int) -> Tensor:
    """Square resize (bilinear, antialiased when shrinking); identity at the same size."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-2] > size
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )


def resolve_checkpoint(
    name: str | Path, weights_dir: str | Path | None, *, what: str, how_to_get: str | None = None
) -> Path:
    """The file `name` as given, or inside `weights_dir`.

    A known public file (weights_registry.KNOWN_WEIGHTS) that is missing raises
    `MissingWeightsError` from `weights_registry.resolve_weight` (names the file, where it comes
    from and `make weights`); any other missing file raises one naming the file and
    `how_to_get` (e.g. the task that writes it).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    bare_name = not path.is_absolute() and len(path.parts) == 1
    if weights_dir is not None and bare_name:
        if path.name in KNOWN_WEIGHTS:
            return resolve_weight(weights_dir, path.name)
        candidate = Path(weights_dir).expanduser() / path
        if candidate.is_file():
            return candidate.resolve()
        where = f"{candidate.resolve()} (looked in paths.weights_dir)"
    else:
        where = str(path.resolve())
    raise MissingWeightsError(
        f"{what}: file not found: {where}\n"
        f"  {how_to_get or 'Point the config at the file, or run `make weights`.'}"
    )


@torch.no_grad()
def mapping_mean(generator: Generator, samples: int = 4096, seed: int = 0) -> Tensor:
    """Mean W of `generator`'s mapping over `samples` seeded z: [style_dim] float32 (CPU)."""
    rng = torch.Generator().manual_seed(int(seed))
    device = generator.input.input.device
    total = torch.zeros(generator.style_dim, dtype=torch.float64)
    for start in range(0, samples, 1024):
        z = torch.randn(min(1024, samples - start), generator.style_dim, generator=rng)
        total += generator.get_latent(z.to(device)).double().sum(0).cpu()
    return (total / samples).float()


def build_stylegan2(
    checkpoint: str | Path | None,
    *,
    weights_dir: str | Path | None,
    arch: Mapping[str, Any],
    allow_random_init: bool,
    init_seed: int,
    what: str,
    how_to_get: str | None = None,
    latent_avg_samples: int = 4096,
) -> tuple[Generator, Tensor]:
    """A frozen eval StyleGAN2 `Generator(**arch)` and its latent_avg [style_dim].

    `checkpoint` is a rosinality file (path, or file name inside `weights_dir`); its `g_ema`
    is loaded strictly and its `latent_avg` used when present (else the mean W of
    `latent_avg_samples` seeded z). `checkpoint=None` (or a missing file) with
    `allow_random_init` builds a random generator from `init_seed`, with a logged WARNING;
    without it a missing file is a `MissingWeightsError` naming the file.
    """
    arch = check_arch(arch, what)
    path: Path | None = None
    if checkpoint is not None:
        try:
            path = resolve_checkpoint(checkpoint, weights_dir, what=what, how_to_get=how_to_get)
        except MissingWeightsError:
            if not allow_random_init:
                raise
            log.warning("%s: %s not found", what, checkpoint)
    elif not allow_random_init:
        raise MissingWeightsError(
            f"{what}: no checkpoint given (null). {how_to_get or ''} Random weights are only "
            "for smoke tests: allow_random_init=true (debug=tiny sets it)."
        )
    with seeded_init(init_seed):
        generator = Generator(**arch)
    latent_avg: Tensor | None = None
    if path is None:
        log.warning(
            "%s: RANDOMLY INITIALISED StyleGAN2 %s (init_seed=%d): smoke tests only, the "
            "pairs are meaningless",
            what,
            arch,
            init_seed,
        )
    else:
        parts = load_stylegan2_checkpoint(path)
        if parts["g_ema"] is None:
            raise MissingWeightsError(f"{what}: {path} holds no generator ('g_ema' or 'g')")
        load_into(generator, parts["g_ema"], source=path, expected=f"stylegan2.Generator({arch})")
        latent_avg = parts["latent_avg"]
        log.info("%s: loaded %s", what, path)
    if latent_avg is None:
        latent_avg = mapping_mean(generator, latent_avg_samples)
    latent_avg = latent_avg.detach().float().reshape(-1)
    if latent_avg.numel() != generator.style_dim:
        raise ValueError(
            f"{what}: latent_avg has {latent_avg.numel()} values, the generator's W has "
            f"{generator.style_dim}"
        )
    generator.eval().requires_grad_(False)
    return generator, latent_avg


def _render_size(render_size: int | str | None, resolution: int, size: int) -> int:
    """The block resolution to render at (see StyleGAN2Generator's `render_size`)."""
    if render_size is None:
        return size
    if render_size == "auto":
        block = 4
        while block < min(resolution, size):
            block *= 2
        return block
    try:
        block = int(render_size)
    except (TypeError, ValueError):
        block = 0
    if block < 4 or block > size or block & (block - 1):
        raise ValueError(
            f"generator.render_size must be 'auto', null or a power of two in 4..{size}, "
            f"got {render_size!r}"
        )
    return block


class StyleGAN2Generator(nn.Module):
    """SourceGenerator G_s: a rosinality StyleGAN2 (FFHQ 1024 by default), seeded per pair.

    Args:
        checkpoint: rosinality file (path, or a name inside `weights_dir`); `g_ema` and
            `latent_avg` are used. None only with `allow_random_init`.
        weights_dir: where bare file names are looked up (`paths.weights_dir`).
        arch: `nets.stylegan2.Generator` keyword arguments (size, style_dim, n_mlp,
            channel_multiplier, channel_max); FFHQ config-f by default.
        truncation: psi of the truncation trick, w = avg + psi * (w - avg); 1 = none.
        resolution: side of the returned images (resized on the device); None = the
            generator's size.
        render_size: the generator block whose skip image is rendered: "auto" (default) =
            the smallest block at or above `resolution` (FFHQ 1024 at a 512 working size stops
            after the 512 block: 20 % fewer FLOPs). That skip image approximates the resized
            full render (the finer blocks add a residual on top of it; how close it is on the
            real FFHQ weights is not measured here), None = the full size (the exact upstream
            image, then resized), or a power of two. Mixers render at the same size.
        latent_avg_samples: z averaged for latent_avg when the file has none.
        allow_random_init: a missing/None checkpoint builds random weights (WARNING logged)
            instead of raising; for smoke tests (debug=tiny) only.
        init_seed: seed of that random init (equal seeds give equal weights).
        bf16: run the synthesis network in bfloat16 (the mapping stays float32; images are
            returned as float32). For GPUs with bf16 support; slow on CPUs.

    `sample(seeds)` -> (images [B, 3, resolution, resolution] in [-1, 1], W+ [B, n_latent,
    style_dim]); `render(wplus)` -> images at the generator's size. Frozen, always eval.
    The stored noise maps are used (rosinality `randomize_noise=False`): a pair depends on its
    z only, and a mixer rendering the same W+ sees the same noise.
    """

    def __init__(
        self,
        checkpoint: str | None = "stylegan2-ffhq-config-f.pt",
        weights_dir: str | None = None,
        arch: Mapping[str, Any] | None = None,
        truncation: float = 0.7,
        resolution: int | None = None,
        render_size: int | str | None = "auto",
        latent_avg_samples: int = 4096,
        allow_random_init: bool = False,
        init_seed: int = 0,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(truncation) <= 1.0:
            raise ValueError(f"generator.truncation must be in [0, 1], got {truncation}")
        self.arch = check_arch(arch, "generator")
        self.generator, latent_avg = build_stylegan2(
            checkpoint,
            weights_dir=weights_dir,
            arch=self.arch,
            allow_random_init=allow_random_init,
            init_seed=init_seed,
            what="generator (G_s)",
            latent_avg_samples=latent_avg_samples,
        )
        self.register_buffer("latent_avg", latent_avg)
        self.truncation = float(truncation)
        self.resolution = int(resolution or self.arch["size"])
        self.render_size = _render_size(render_size, self.resolution, self.arch["size"])
        self.bf16 = bool(bf16)
        if self.bf16:
            set_bf16(self.generator, keep_float32=("style",))
        self.init_seed = int(init_seed)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> StyleGAN2Generator:
        """A frozen data source: always in eval mode."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    def latents(self, seeds: Tensor) -> Tensor:
        """Truncated W+ [B, n_latent, style_dim] for the per-pair seeds (z drawn on CPU)."""
        z = gaussian_latents(torch.as_tensor(seeds).reshape(-1), self.generator.style_dim)
        w = self.generator.get_latent(z.to(self.device))
        if self.truncation < 1.0:
            w = torch.lerp(self.latent_avg.unsqueeze(0), w, self.truncation)
        return w.unsqueeze(1).expand(-1, self.n_latent, -1).contiguous()

    @torch.no_grad()
    def render(self, wplus: Tensor) -> Tensor:
        """G_s(W+) at `render_size`, clamped to [-1, 1] (fp32)."""
        dtype = self.generator.input.input.dtype
        styles = self.generator.get_styles(wplus.to(self.device, dtype))
        images = self.generator.synthesis_from_styles(styles, max_resolution=self.render_size)
        return images.float().clamp_(-1.0, 1.0)

    @torch.no_grad()
    def sample(self, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """(images at `resolution`, W+ latents) for the per-pair seeds."""
        wplus = self.latents(seeds)
        return resize_images(self.render(wplus), self.resolution), wplus

    def extra_repr(self) -> str:
        return (
            f"size={self.arch['size']}, render_size={self.render_size}, "
            f"resolution={self.resolution}, truncation={self.truncation}"
        )


class AnimeGANBackground(AnimeGANStylizer):
    """bg_stylizer=animegan with the debug=tiny fallback of the other real parts.

    Exactly `background.AnimeGANStylizer` when its weight file exists. When it is missing and
    `allow_random_init` is set, a randomly initialised AnimeGANv2 (from `init_seed`) is
    loaded through the same constructor (via a temporary file, so every check and setting of
    AnimeGANStylizer applies), with a logged WARNING; without it the MissingWeightsError
    (naming the file and `make weights`) stands.
    """

    def __init__(
        self,
        weights_dir: str | Path,
        filename: str = "face_paint_512_v2.pt",
        align_corners: bool = True,
        keep_colors: float = 0.0,
        channels_last: bool = True,
        allow_random_init: bool = False,
        init_seed: int = 0,
    ) -> None:
        options = {
            "align_corners": align_corners,
            "keep_colors": keep_colors,
            "channels_last": channels_last,
        }
        try:
            super().__init__(weights_dir, filename, **options)
            return
        except MissingWeightsError:
            if not allow_random_init:
                raise
        log.warning(
            "bg_stylizer: %s not found: RANDOMLY INITIALISED AnimeGANv2 (init_seed=%d); smoke "
            "tests only, the backgrounds are meaningless",
            filename,
            init_seed,
        )
        with seeded_init(init_seed):
            state = AnimeGANGenerator().state_dict()
        with tempfile.TemporaryDirectory(prefix="animegan_random_") as folder:
            torch.save(state, Path(folder) / filename)
            super().__init__(folder, filename, **options)
