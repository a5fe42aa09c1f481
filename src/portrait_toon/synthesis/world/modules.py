"""The embedded world's parts as the pipeline's modules: ProceduralGenerator (G_s's stand-in),
ProceduralMixer (CDSM's), ProceduralBlendMixer (the two-stage baseline's blended generator) and
ProceduralSegmenter (the face parser's), per docs/interfaces.md."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from portrait_toon.synthesis.world.blend import BlendLook, blend_frame
from portrait_toon.synthesis.world.renderer import ProceduralWorld
from portrait_toon.synthesis.world.scene import Scene


class ProceduralGenerator(nn.Module):
    """`SourceGenerator` of the embedded world: `sample(seeds) -> (photo, Scene)`, rendered on
    the device this module was moved to."""

    def __init__(self, resolution: int | Sequence[int] = 128, **world_options) -> None:
        super().__init__()
        self.world = ProceduralWorld(resolution=resolution, **world_options)
        # No weights; a buffer so that `.to(device)` decides where rendering happens.
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)

    @property
    def resolution(self) -> int | tuple[int, int]:
        height, width = self.world.size
        return height if height == width else (height, width)

    def sample(self, seeds: Tensor) -> tuple[Tensor, Scene]:
        """Photos [B, 3, H, W] in [-1, 1] and their Scene for int64 seeds [B]."""
        return self.world.render(seeds, device=self.device_anchor.device)

    def forward(self, seeds: Tensor) -> tuple[Tensor, Scene]:
        return self.sample(seeds)


class ProceduralMixer(nn.Module):
    """Stands in for CDSM: the character rendering of the scene the generator drew."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)

    def render(self, latents: Scene) -> Tensor:
        """The character rendering [B, 3, H, W] of the scenes in `latents`."""
        if not isinstance(latents, Scene):
            raise TypeError(
                f"{type(self).__name__}.render needs the Scene from ProceduralGenerator.sample, "
                f"got {type(latents).__name__}; use mixer=procedural or procedural_blend only "
                "with generator=procedural"
            )
        return latents.character.to(self.device_anchor.device)

    def forward(self, latents: Scene) -> Tensor:
        return self.render(latents)


class ProceduralBlendMixer(ProceduralMixer):
    """Stands in for the paper's two-stage baseline (Toonify layer blending): the blended face
    generator's whole frame, i.e. the character rendering with everything outside the face
    re-rendered in the face generator's out-of-distribution look (world/blend.py). Options:
    conf/mixer/procedural_blend.yaml."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.look = BlendLook.build(**options)

    def render(self, latents: Scene) -> Tensor:
        """The blended whole frame [B, 3, H, W] of the scenes in `latents`."""
        character = super().render(latents)
        labels = latents.character_labels.to(character.device)
        return blend_frame(character, labels, latents.seeds, self.look)

    def extra_repr(self) -> str:
        return repr(self.look)


class ProceduralSegmenter(nn.Module):
    """Stands in for the face parser: returns the exact labels the world drew. It cannot parse
    an arbitrary image (use segmenter=bisenet for that)."""

    DOMAINS = ("source", "character")

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)

    def parse(self, images: Tensor, latents: Scene | None = None, domain: str = "source") -> Tensor:
        """Labels [B, H, W] of `images`: the photo's (`domain="source"`) or the character's."""
        if domain not in self.DOMAINS:
            raise ValueError(f"ProceduralSegmenter.parse: domain must be one of {self.DOMAINS}, "
                             f"got {domain!r}")  # fmt: skip
        if not isinstance(latents, Scene):
            raise ValueError(
                "ProceduralSegmenter can only return the labels of scenes the embedded world "
                f"rendered (pass its Scene as latents; got {type(latents).__name__}). To parse "
                "arbitrary images use segmenter=bisenet."
            )
        labels = latents.labels if domain == "source" else latents.character_labels
        if (
            images.dim() != 4
            or images.shape[0] != labels.shape[0]
            or images.shape[-2:] != labels.shape[-2:]
        ):
            raise ValueError(
                f"ProceduralSegmenter.parse: images {tuple(images.shape)} do not match the scene's "
                f"labels {tuple(labels.shape)}; parse the rendered images before resizing/cropping"
            )
        return labels.to(images.device)

    def forward(
        self, images: Tensor, latents: Scene | None = None, domain: str = "source"
    ) -> Tensor:
        return self.parse(images, latents, domain)
