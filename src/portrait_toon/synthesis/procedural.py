"""The embedded world's public names (configs' `_target_`s point here); the renderer itself lives
in the `portrait_toon.synthesis.world` package, one job per module (docs/embedded_world.md)."""

from portrait_toon.synthesis.world import *  # noqa: F403 -- re-exports exactly world.__all__
from portrait_toon.synthesis.world import __all__  # noqa: F401
