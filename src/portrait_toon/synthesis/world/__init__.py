"""The embedded world: a seeded, batched, pure-torch renderer of portrait "photos", their exact
face-parsing labels and a cartoon "character" rendering of the same scene. It stands in for the
FFHQ StyleGAN2 (`G_s`), CDSM and the face parser when no weights are present
(docs/embedded_world.md). One job per module: materials, noise, shapes, sampling, rasterizer,
shading, photo, character, backgrounds, renderer, blend (the two-stage baseline's look),
modules."""

from portrait_toon.synthesis.world.materials import HAIR_COLORS, HAIR_STYLES, skin_lab_from_ita
from portrait_toon.synthesis.world.modules import (
    ProceduralBlendMixer,
    ProceduralGenerator,
    ProceduralMixer,
    ProceduralSegmenter,
)
from portrait_toon.synthesis.world.renderer import ProceduralWorld
from portrait_toon.synthesis.world.scene import Scene

__all__ = [
    "HAIR_COLORS",
    "HAIR_STYLES",
    "ProceduralBlendMixer",
    "ProceduralGenerator",
    "ProceduralMixer",
    "ProceduralSegmenter",
    "ProceduralWorld",
    "Scene",
    "skin_lab_from_ita",
]
