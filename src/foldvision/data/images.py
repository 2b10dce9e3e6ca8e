"""Decode any image file into a uint8 HxWxC array, whatever its mode or format.

Handles L, LA, RGB, RGBA, P (with transparency), CMYK, I;16 and I/F modes, EXIF orientation and
JPEG/PNG/WebP/BMP/TIFF. Errors name the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from foldvision.errors import FoldvisionError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageReadError(FoldvisionError):
    """An image that is missing or cannot be decoded; the message names the file."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float modes -> 8-bit L, scaling by the actual value range of the mode."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        scale = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        arr = np.clip(arr.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.mode == "F":
        hi = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent pixels onto white (what a viewer shows) instead of dropping alpha,
    which would turn transparent backgrounds into arbitrary colours (often black)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def load_image(path: str | os.PathLike, channels: int = 3, min_size: Sequence[int] | None = None) -> np.ndarray:
    """Read `path` as a uint8 array of shape (H, W, channels), channels 1 or 3.

    min_size: the (h, w) the caller will resize the image down to. A JPEG larger than that is then
    decoded at a reduced scale (libjpeg's DCT scaling by 1/2, 1/4 or 1/8) that still covers it on
    both sides, whatever the EXIF rotation: 1.5-4x faster for photos resized for a network, and
    the resize that follows sees an equally good downscale. Leave it None when pixels must be at
    full resolution (crop boxes are given in full-resolution pixels).

    Raises ImageReadError naming the file when it is missing, empty or undecodable.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if min_size is not None and img.format == "JPEG":
                side = max(int(s) for s in min_size)
                img.draft(None, (side, side))  # both sides >= side: rotation-proof
            img = ImageOps.exif_transpose(img)  # phone photos: respect the orientation tag
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                img = _to_8bit(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = _flatten_alpha(img)
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"{path} is larger than Pillow's safety limit ({e}). If the image is genuine, raise the limit "
            "(PIL.Image.MAX_IMAGE_PIXELS) or resize it, or set data.skip_bad=true to skip it."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        size = path.stat().st_size if path.exists() else 0
        raise ImageReadError(
            f"cannot decode image {path} ({size} bytes): {e}. Replace or remove the file, "
            "or set data.skip_bad=true to skip unreadable images and list them."
        ) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr
