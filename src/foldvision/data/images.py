"""Decode any image file into a uint8 HxWxC array, whatever its mode or format.

Handles L, LA, RGB, RGBA, P (with transparency), CMYK, I;16 and I/F modes, EXIF orientation and
JPEG/PNG/WebP/BMP/TIFF. Errors name the file. JPEGs (the bulk of competition data) go straight
from libjpeg-turbo into numpy through simplejpeg, optionally at a reduced scale; everything else,
and any JPEG simplejpeg declines, through Pillow (benchmarks/data_pipeline.py measures both).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from foldvision.data.boxes import crop
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


# EXIF orientation tag -> the array operation that shows the image upright (ImageOps.exif_transpose's table)
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _decode_jpeg(data: bytes, img: Image.Image, channels: int, min_size: Sequence[int] | None) -> np.ndarray | None:
    """libjpeg-turbo straight into numpy (simplejpeg): 1.2-1.3x Pillow's speed at full size
    (benchmarks/BENCHMARKS.md), the same pixels. Orientation is read from the EXIF header Pillow already parsed. None -> decode
    with Pillow (CMYK/YCCK JPEGs, or anything simplejpeg refuses, e.g. a damaged file, so that
    Pillow names the problem)."""
    # colour to gray stays with Pillow: libjpeg's gray is the stored luma, Pillow's is computed from
    # the clipped RGB, up to 10 levels apart; gray JPEGs and colour output are the same pixels
    if img.mode not in ("RGB", "L") or (channels == 1 and img.mode != "L"):
        return None
    try:
        import simplejpeg
    except ImportError:  # an optional speed-up: Pillow decodes the same pixels
        return None
    side = max(int(s) for s in min_size) if min_size is not None else 0  # both sides: rotation-proof
    try:
        arr = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if channels == 1 else "RGB", min_height=side, min_width=side, strict=True
        )
    except ValueError:
        return None
    orientation = img.getexif().get(0x0112, 1)
    if orientation in _ORIENTATIONS:
        arr = np.ascontiguousarray(_ORIENTATIONS[orientation](arr))
    return arr


def load_image(path: str | os.PathLike, channels: int = 3, min_size: Sequence[int] | None = None) -> np.ndarray:
    """Read `path` as a uint8 array of shape (H, W, channels), channels 1 or 3.

    min_size: the (h, w) the caller will resize the image down to. A JPEG larger than that is then
    decoded at a reduced scale (libjpeg's DCT scaling, by 1/8 steps) that still covers it on both
    sides, whatever the EXIF rotation: 1.7-2x Pillow's full decode for photos resized for a network
    (benchmarks/BENCHMARKS.md), and the resize that follows sees an equally good downscale. Leave it None when pixels must be at
    full resolution (crop boxes are given in full-resolution pixels).

    Raises ImageReadError naming the file when it is missing, empty or undecodable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:  # parses the header only
            arr = _decode_jpeg(data, img, channels, min_size) if img.format == "JPEG" else None
            if arr is None:
                arr = _decode_pillow(img, channels, min_size)
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


def _decode_pillow(img: Image.Image, channels: int, min_size: Sequence[int] | None) -> np.ndarray:
    """Every format and mode: orientation, 16-bit and float ranges, transparency on white."""
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
    return np.asarray(img, dtype=np.uint8)


def read_image(
    path: str | os.PathLike,
    channels: int = 3,
    size: Sequence[int] | None = None,
    box: np.ndarray | None = None,
    margin: float = 0.0,
) -> np.ndarray:
    """The one image-reading path of training, the image cache and prediction: `path` decoded to a
    uint8 (H, W, channels) array, cut to `box` when one is given.

    size:   the (h, w) the caller resizes to next; without a box a large JPEG decodes at a reduced
            scale that still covers it (see load_image).
    box:    x1, y1, x2, y2 in full-resolution pixels, grown by `margin` (a fraction of the box
            size); the image then decodes at full resolution. An all-NaN box keeps the whole image.
    """
    if box is None:
        return load_image(path, channels, size)
    return crop(load_image(path, channels), box, margin)
