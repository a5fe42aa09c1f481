"""portrait_toon: train networks that turn any photo of a person into a Webtoon-style cartoon.

`from portrait_toon import Stylizer` is the Python API of a trained network
(`portrait_toon.inference.stylizer`); it is imported on first use, so `import portrait_toon`
stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Stylizer", "__version__"]

if TYPE_CHECKING:
    from portrait_toon.inference.stylizer import Stylizer


def __getattr__(name: str) -> Any:
    if name == "Stylizer":
        from portrait_toon.inference.stylizer import Stylizer

        return Stylizer
    raise AttributeError(f"module 'portrait_toon' has no attribute {name!r}")
