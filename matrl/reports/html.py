"""Self-contained HTML reports: one file, every image embedded as a data URI, no script, no network.

    page = HtmlReport("matrl demo")
    page.heading("Training")
    page.paragraph("…")
    page.image(png_bytes_or_path, caption="reward curve")
    page.table(["model", "reward"], [["before", 0.57], ["after", 0.62]])
    page.grid([[ImageCell(target, "target"), ImageCell(render, "after: 0.61")], ...], header=[...])
    page.write(path)

Numbers are formatted to 3 decimals; text is escaped. A report opens in any browser offline (a test
loads one in headless Chromium and checks that every image decodes).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8em 0; } figcaption { color: #555; font-size: 0.9em; }
.grid td { border: none; padding: 3px; text-align: center; vertical-align: top; font-size: 0.85em; }
.grid img { display: block; image-rendering: pixelated; }
.note { color: #555; font-size: 0.9em; }
"""


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a path, PNG bytes, a PIL image, an (H,W,3)/(H,W) uint8 or float array, or a
    (3,H,W)/(H,W,3) tensor in [0,1]."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, Image.Image):
        pil = image
    else:
        if hasattr(image, "detach"):
            image = image.detach().float().cpu().numpy()
            if image.ndim == 3 and image.shape[0] in (1, 3):
                image = image.transpose(1, 2, 0)
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        pil = Image.fromarray(array)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


@dataclass
class ImageCell:
    image: Any
    caption: str = ""
    width: int = 160


class HtmlReport:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def image(self, image: Any, caption: str = "", width: int | None = None) -> None:
        style = f' style="max-width:100%;width:{width}px"' if width else ' style="max-width:100%"'
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img alt="{html.escape(caption or "figure")}" src="{data_uri(image)}"{style}>'
                          f"{cap}</figure>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(
            f'<td class="num">{fmt(v)}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def grid(self, rows: Sequence[Sequence[ImageCell]], header: Sequence[str] | None = None) -> None:
        out = ['<table class="grid">']
        if header:
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(
                f'<td><img alt="{html.escape(c.caption or "image")}" src="{data_uri(c.image)}" width="{c.width}" '
                f'height="{c.width}">{html.escape(c.caption)}</td>' for c in row) + "</tr>")
        out.append("</table>")
        self.parts.append("".join(out))

    def render(self) -> str:
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
                + "\n".join(self.parts) + "</body></html>\n")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
