"""Bounding-box crops before the transforms (the Stanford Dogs recipe: crop each dog to its box).

Boxes come from CSV columns (x1, y1, x2, y2 in pixels) or from Pascal VOC XML files, e.g. the
Stanford Dogs layout Annotation/<wnid>/<image id> (no extension). Several objects in one file give
the box enclosing them all. A margin (a fraction of the box size) keeps some context.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from foldvision.errors import FoldvisionError


def bbox_margin(data_cfg) -> float:
    """`data.bbox.margin`: the context kept around each box, a fraction of its size (0 without data.bbox)."""
    bbox = data_cfg.get("bbox")
    return float(bbox.get("margin") or 0.0) if bbox else 0.0


def crop(image: np.ndarray, box: np.ndarray | None, margin: float = 0.0) -> np.ndarray:
    """`image` cut to `box` (x1, y1, x2, y2) grown by `margin`, clipped to the image; NaN box: whole image."""
    if box is None or np.isnan(box).any():
        return image
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    x1, y1 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    x2, y2 = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if x2 - x1 < 1 or y2 - y1 < 1:  # a box outside the image: keep the image rather than fail
        return image
    return image[y1:y2, x1:x2]


def read_voc_box(path: Path) -> np.ndarray:
    """The box enclosing every <object><bndbox> of a Pascal VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise FoldvisionError(f"cannot read the annotation {path}: {e}") from None
    boxes = []
    for bb in root.iter("bndbox"):
        try:
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError):
            raise FoldvisionError(f"{path}: a <bndbox> lacks xmin/ymin/xmax/ymax numbers.") from None
    if not boxes:
        return np.full(4, np.nan)
    b = np.array(boxes)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def voc_boxes(image_paths: list[str], image_root: Path, voc_dir: Path) -> np.ndarray:
    """Boxes for images from VOC files at voc_dir/<image path relative to image_root without
    extension>[.xml] or voc_dir/<stem>[.xml]; NaN where an image has no annotation."""
    out = np.full((len(image_paths), 4), np.nan)
    for i, p in enumerate(image_paths):
        rel = os.path.splitext(os.path.relpath(p, image_root))[0]
        stem = Path(p).stem
        for cand in (voc_dir / rel, voc_dir / f"{rel}.xml", voc_dir / stem, voc_dir / f"{stem}.xml"):
            if cand.is_file():
                out[i] = read_voc_box(cand)
                break
    return out
