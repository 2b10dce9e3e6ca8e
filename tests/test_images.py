"""Every image mode and format decodes to uint8 HxWxC; bad files raise errors naming the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foldvision.data.images import ImageReadError, load_image


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "PNG"),
        ("RGB", "JPEG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("RGB", "WEBP"),
        ("LA", "PNG"),
    ],
)
def test_modes_decode(tmp_path: Path, mode: str, fmt: str) -> None:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (12, 10))).astype(np.uint16))
    else:
        img = base.convert(mode)
    path = _save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    for channels in (1, 3):
        arr = load_image(path, channels)
        assert arr.dtype == np.uint8 and arr.shape == (12, 10, channels)


def test_16bit_png_keeps_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    arr = load_image(_save(Image.fromarray(ramp), tmp_path / "a.png"), 1)[..., 0]
    assert arr.min() == 0 and arr.max() == 255  # not clipped to white, not divided to black


def test_transparent_palette_png_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    img.info["transparency"] = 0
    arr = load_image(_save(img, tmp_path / "p.png", transparency=0), 3)
    assert (arr == 255).all()  # fully transparent black -> white background


def test_exif_orientation_respected(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    arr = load_image(_save(img, tmp_path / "r.jpg", exif=exif.tobytes()), 3)
    assert arr.shape[:2] == (20, 10)  # shown tall


@pytest.mark.parametrize("content", [b"", b"this is not an image", "truncated"])
def test_bad_files_name_the_file(tmp_path: Path, content) -> None:
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="JPEG")
        content = buf.getvalue()[:200]
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        load_image(path)


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_large_jpeg_decodes_at_reduced_scale_covering_the_target(tmp_path: Path) -> None:
    """min_size: a JPEG 4x larger than the network input decodes smaller (faster) but still covers
    the input on both sides, also when EXIF turns it; after the resize it matches a full decode."""
    import cv2

    yy, xx = np.mgrid[0:480, 0:640]
    photo = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) * 255 // 1120], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 480 wide, 640 tall
    path = _save(Image.fromarray(photo), tmp_path / "big.jpg", quality=95, exif=exif.tobytes())
    full = load_image(path)
    fast = load_image(path, min_size=(150, 100))
    assert full.shape == (640, 480, 3)
    assert fast.shape[0] < full.shape[0] and fast.shape[0] >= 150 and fast.shape[1] >= 150
    assert fast.shape[0] / fast.shape[1] == pytest.approx(640 / 480, rel=0.02)  # orientation kept
    a, b = (cv2.resize(x, (100, 150), interpolation=cv2.INTER_AREA).astype(int) for x in (full, fast))
    assert np.abs(a - b).mean() < 2.0
    png = _save(Image.fromarray(photo), tmp_path / "big.png")
    assert load_image(png, min_size=(150, 100)).shape == (480, 640, 3)  # only JPEG has a cheap scaled decode


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("channels", [1, 3])
def test_fast_jpeg_path_equals_pillow_for_every_orientation(tmp_path: Path, orientation: int, channels: int) -> None:
    """JPEGs decode through simplejpeg; EXIF orientation and grayscale come out as Pillow shows them,
    pixel for pixel, for colour and for grayscale files."""
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for mode in ("RGB", "L"):
        img = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).convert(mode)
        path = _save(img, tmp_path / f"o_{mode}.jpg", quality=95, exif=exif.tobytes())
        with Image.open(path) as ref:
            expected = np.asarray(ImageOps.exif_transpose(ref).convert("L" if channels == 1 else "RGB"))
        got = load_image(path, channels)
        assert np.array_equal(got[..., 0] if channels == 1 else got, expected), mode


def test_cmyk_and_truncated_jpegs_go_through_pillow(tmp_path: Path) -> None:
    rgb = np.full((16, 16, 3), (200, 30, 30), np.uint8)
    cmyk = _save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    assert np.abs(load_image(cmyk).astype(int) - rgb).max() < 12
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:-40])  # the end of the scan is missing
    with pytest.raises(ImageReadError, match="t.jpg"):
        load_image(tmp_path / "t.jpg")


def test_jpegs_take_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RGB and gray JPEGs never reach Pillow's decoder (the speed-up is real, not a silent fallback)."""
    import foldvision.data.images as images

    def pillow_decode(*args, **kwargs):
        raise AssertionError("decoded by Pillow")

    monkeypatch.setattr(images, "_decode_pillow", pillow_decode)
    rgb = _save(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), tmp_path / "a.jpg")
    gray = _save(Image.fromarray(np.zeros((8, 8), np.uint8)), tmp_path / "b.jpg")
    assert load_image(rgb, 3, min_size=(4, 4)).shape[2] == 3 and load_image(gray, 1).shape == (8, 8, 1)
