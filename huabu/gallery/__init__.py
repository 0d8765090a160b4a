"""Output storage: A1111 `parameters` PNG metadata, atomic writes, the SQLite index."""

from huabu.gallery.pnginfo import create_infotext, next_output_path, parse_infotext, read_parameters, save_png_atomic
from huabu.gallery.store import Gallery, GalleryItem

__all__ = [
    "Gallery",
    "GalleryItem",
    "create_infotext",
    "next_output_path",
    "parse_infotext",
    "read_parameters",
    "save_png_atomic",
]
