"""The side-by-side picture of an inference: target | render | the five maps | runner-up candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

TILE = 192
LABEL = 16
MARGIN = 4


def _tile(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS)


def side_by_side(target: np.ndarray, map_files: Sequence[Path], runner_ups: Sequence[tuple[str, np.ndarray]],
                 title: str = "") -> Image.Image:
    """One row of labelled tiles: the target photo crop, then `map_files` (render first, labelled by file
    stem), then the runner-ups' renders labelled with structure and reward; a title line above."""
    tiles: list[tuple[str, Image.Image]] = [("target", _tile(target))]
    for path in map_files:
        with Image.open(path) as im:
            tiles.append((Path(path).stem, _tile(im)))
    tiles += [(label, _tile(image)) for label, image in runner_ups]
    width = len(tiles) * (TILE + MARGIN) + MARGIN
    top = LABEL + MARGIN if title else 0
    sheet = Image.new("RGB", (width, top + TILE + LABEL + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((MARGIN, 2), title, fill="black")
    for i, (label, tile) in enumerate(tiles):
        x = MARGIN + i * (TILE + MARGIN)
        sheet.paste(tile, (x, top + MARGIN))
        draw.text((x + 2, top + MARGIN + TILE + 2), label[:30], fill="black")
    return sheet
