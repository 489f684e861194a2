"""Decode encoded target images strictly: PNG and JPEG only, and never a damaged one.

Pillow fills what a damaged file lacks and says nothing: a PNG whose IHDR declares more rows than
its IDAT data holds decodes with the missing rows black, and a JPEG with zeroed bytes in its
entropy-coded data decodes with the rest of the picture grey (libjpeg only *warns*, and Pillow drops
libjpeg's warnings). A target like that would be scored as if it were the photo. So before Pillow
decodes anything:

- PNG: every chunk is walked and its CRC checked, IHDR is read, and the IDAT stream is inflated
  (in bounded steps, never held whole) to check that it ends (zlib end of stream) after exactly the
  number of bytes its declared size, bit depth, colour type and interlacing need, and that IEND
  follows.
- JPEG: libjpeg-turbo (through `simplejpeg`) decodes the whole entropy-coded stream at its smallest
  DCT scale with `strict=True`, which turns every libjpeg warning ("Corrupt JPEG data: ...",
  "Premature end of JPEG file") into an error. Pillow then decodes the pixels as before, so rewards
  do not change.

Every rejection is an `ImageError` whose message names the problem (the server answers it with
INVALID_ARGUMENT). Sides are checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
FORMATS = ("PNG", "JPEG")

# PNG colour type -> samples per pixel (PNG spec 11.2.2)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7 passes: (x0, y0, dx, dy)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20


class ImageError(ValueError):
    """An encoded image that cannot be used; the message names the problem."""


def image_format(data: bytes) -> str:
    """'PNG' or 'JPEG' from the signature; anything else is an ImageError."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG"
    head = data[:8].hex(" ") if data else "no bytes"
    raise ImageError(f"not a PNG or JPEG image (first bytes: {head}); send PNG or JPEG")


def _png_row_bytes(width: int, bits_per_pixel: int) -> int:
    return 1 + (width * bits_per_pixel + 7) // 8  # filter byte + packed samples


def png_expected_data_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlace: int) -> int:
    """Bytes of the inflated IDAT stream that an image of this header needs."""
    bpp = bit_depth * _PNG_CHANNELS[colour_type]
    if not interlace:
        return height * _png_row_bytes(width, bpp)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        cols = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if cols and rows:
            total += rows * _png_row_bytes(cols, bpp)
    return total


def check_png(data: bytes, max_side: int) -> tuple[int, int]:
    """Walk a PNG's chunks and inflate its image data; return (width, height) or raise ImageError."""
    pos = len(PNG_SIGNATURE)
    header = None
    expected = 0
    inflated = 0
    inflater = None
    seen_iend = False
    while pos < len(data):
        if pos + 8 > len(data):
            raise ImageError(f"PNG truncated inside a chunk header at byte {pos}")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise ImageError(f"PNG truncated: chunk {kind.decode('latin-1')!r} at byte {pos} declares {length} "
                             f"bytes of data; the file ends {end - len(data)} bytes short of it")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ImageError(f"PNG chunk {kind.decode('latin-1')!r} at byte {pos} fails its CRC check (corrupt data)")
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise ImageError("PNG does not start with a 13-byte IHDR chunk")
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if colour not in _PNG_CHANNELS or depth not in _PNG_DEPTHS[colour] or interlace > 1:
                raise ImageError(f"PNG header is invalid (bit depth {depth}, colour type {colour}, "
                                 f"interlace {interlace})")
            if width == 0 or height == 0:
                raise ImageError(f"PNG declares an empty image ({width}x{height})")
            if max(width, height) > max_side:
                raise ImageError(f"{width}x{height} image exceeds max_target_side {max_side}")
            header = (width, height)
            expected = png_expected_data_bytes(width, height, depth, colour, interlace)
            inflater = zlib.decompressobj()
        elif kind == b"IDAT":
            if inflater.eof:
                raise ImageError("PNG has image data after the end of its zlib stream")
            chunk = body
            try:
                while chunk:
                    inflated += len(inflater.decompress(chunk, _INFLATE_STEP))
                    chunk = inflater.unconsumed_tail
                    if inflated > expected:
                        raise ImageError(f"PNG image data holds more than the {expected} bytes its "
                                         f"{header[0]}x{header[1]} header declares")
            except zlib.error as err:
                raise ImageError(f"PNG image data does not inflate ({err})") from None
        elif kind == b"IEND":
            seen_iend = True
            pos = end
            break
        pos = end
    if header is None:
        raise ImageError("PNG has no IHDR chunk")
    if inflated < expected or not inflater.eof:
        rows = header[1] * inflated // max(expected, 1)
        raise ImageError(f"PNG image data is incomplete: the header declares {header[0]}x{header[1]} "
                         f"({expected} bytes of image data), the file holds {inflated} bytes "
                         f"(about {rows} rows)")
    if not seen_iend:
        raise ImageError("PNG truncated: no IEND chunk")
    return header


def check_jpeg(data: bytes, max_side: int) -> tuple[int, int]:
    """Decode a JPEG's whole entropy-coded stream strictly; return (width, height) or raise ImageError."""
    import simplejpeg

    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as err:
        raise ImageError(f"JPEG header does not decode ({err})") from None
    if max(width, height) > max_side:
        raise ImageError(f"{width}x{height} image exceeds max_target_side {max_side}")
    output = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colourspace, "RGB")
    try:  # the smallest DCT scale still entropy-decodes every block; strict: warnings are errors
        simplejpeg.decode_jpeg(data, colorspace=output, strict=True, min_height=1, min_width=1)
    except ValueError as err:
        raise ImageError(f"JPEG data is corrupt or truncated ({err})") from None
    return width, height


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an undamaged PNG or JPEG no larger than `max_side`; else ImageError."""
    kind = image_format(data)
    (check_png if kind == "PNG" else check_jpeg)(data, max_side)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{kind} does not decode ({type(err).__name__}: {err})") from None
