"""Photos for inference: read (EXIF orientation honoured, clear errors naming the file), optionally
rectify a quadrilateral seen at an angle, then centre-crop to a square and resize.

Reading and cropping are `rollout_workers.targets.read_photo` / `square_crop`, the ones RL's real-photo
targets use, so a photo is prepared the same way for training and for inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rollout_workers.targets import PhotoError, read_photo, square_crop

__all__ = ["PhotoError", "parse_quad", "rectify", "load_photo"]


def parse_quad(text: str) -> list[tuple[float, float]]:
    """`x1,y1,x2,y2,x3,y3,x4,y4` (pixels of the photo as it is displayed, i.e. after EXIF rotation;
    corners in order top-left, top-right, bottom-right, bottom-left) -> four (x, y) points."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--quad {text!r}: expected 8 comma-separated numbers x1,y1,...,x4,y4") from None
    if len(values) != 8:
        raise ValueError(f"--quad {text!r}: expected 8 numbers (4 corners), got {len(values)}")
    return [(values[i], values[i + 1]) for i in range(0, 8, 2)]


def rectify(image: np.ndarray, quad: Sequence[tuple[float, float]], name: str = "photo") -> np.ndarray:
    """Warp the quadrilateral `quad` (TL, TR, BR, BL) of an (H, W, 3) uint8 image to a square whose side
    is the quad's longest edge (OpenCV perspective transform, Lanczos resampling)."""
    import cv2

    h, w = image.shape[:2]
    src = np.asarray(quad, dtype=np.float32)
    if src.shape != (4, 2) or not np.isfinite(src).all():
        raise ValueError(f"{name}: a quad needs 4 finite (x, y) corners")
    if (src[:, 0] < -0.5).any() or (src[:, 0] > w + 0.5).any() or (src[:, 1] < -0.5).any() or (src[:, 1] > h + 0.5).any():
        raise ValueError(f"{name}: quad corners {src.tolist()} fall outside the {w}x{h} photo")
    edges = np.roll(src, -1, axis=0) - src
    area = 0.5 * float(np.sum(src[:, 0] * np.roll(src[:, 1], -1) - np.roll(src[:, 0], -1) * src[:, 1]))
    cross = edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)
    if abs(area) < 16 * 16 or not ((cross > 0).all() or (cross < 0).all()):
        raise ValueError(f"{name}: quad {src.tolist()} is not a convex quadrilateral of at least 16x16 pixels "
                         "(corners go top-left, top-right, bottom-right, bottom-left)")
    side = int(round(float(np.linalg.norm(edges, axis=1).max())))
    dst = np.array([[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(np.ascontiguousarray(image), matrix, (side, side), flags=cv2.INTER_LANCZOS4,
                               borderMode=cv2.BORDER_REFLECT)


def load_photo(path: str | Path, res: int, quad: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """(res, res, 3) uint8: the photo read with its EXIF orientation, the quad rectified when given,
    centre-cropped to a square and resized. Raises PhotoError (a ValueError) naming the file."""
    from PIL import Image

    image = read_photo(path)
    if quad is not None:
        try:
            image = Image.fromarray(rectify(np.asarray(image), quad, str(path)))
        except ValueError as err:
            raise PhotoError(str(err)) from None
    return square_crop(image, res)
