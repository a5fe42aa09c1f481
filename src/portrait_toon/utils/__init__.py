"""Small shared helpers: image grids and labels without torchvision, atomic file writes."""

from portrait_toon.utils.files import atomic_write_bytes, atomic_write_png
from portrait_toon.utils.grid import label_image, make_grid, tensor_to_uint8

__all__ = ["atomic_write_bytes", "atomic_write_png", "label_image", "make_grid", "tensor_to_uint8"]
