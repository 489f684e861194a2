"""Strict target decoding (reward_service.images): every undamaged PNG/JPEG decodes exactly as Pillow
decodes it; damaged ones are refused with the problem named. No Ray, no server."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from reward_service.images import ImageError, check_png, decode_image, png_expected_data_bytes

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def pixels(h: int = 37, w: int = 53) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], -1).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def interlaced_png(array: np.ndarray, drop_tail: int = 0) -> bytes:
    """An Adam7-interlaced RGB PNG (Pillow cannot write one), optionally missing its last bytes of
    image data."""
    h, w, _ = array.shape
    raw = bytearray()
    for x0, y0, dx, dy in ADAM7:
        sub = array[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                raw += b"\x00" + row.tobytes()
    raw = bytes(raw[:len(raw) - drop_tail])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_every_png_mode_decodes_as_pillow_decodes_it(mode):
    data = encode(Image.fromarray(pixels()).convert(mode))
    assert np.array_equal(decode_image(data, 4096), pillow(data))


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_every_jpeg_colour_space_decodes_as_pillow_decodes_it(mode):
    data = encode(Image.fromarray(pixels(64, 64)).convert(mode), "JPEG", quality=85)
    assert np.array_equal(decode_image(data, 4096), pillow(data))


@pytest.mark.parametrize("h, w", [(37, 53), (1, 1), (3, 9), (16, 16)])
def test_interlaced_png_sizes_are_counted_per_adam7_pass(h, w):
    array = pixels(h, w)
    data = interlaced_png(array)
    assert check_png(data, 4096) == (w, h)
    assert np.array_equal(decode_image(data, 4096), array)
    raw = zlib.decompress(data[33 + 8:-12 - 4])  # the IDAT body
    assert png_expected_data_bytes(w, h, 8, 2, 1) == len(raw)
    with pytest.raises(ImageError, match="PNG image data is incomplete"):
        check_png(interlaced_png(array, drop_tail=1), 4096)


def test_the_side_limit_is_checked_from_the_header_before_decoding():
    data = encode(Image.fromarray(pixels(20, 300)))
    with pytest.raises(ImageError, match="300x20 image exceeds max_target_side 256"):
        decode_image(data, 256)
    jpeg = encode(Image.fromarray(pixels(20, 300)), "JPEG")
    with pytest.raises(ImageError, match="300x20 image exceeds max_target_side 256"):
        decode_image(jpeg, 256)


def test_extra_image_data_and_a_missing_iend_are_refused():
    array = pixels()
    raw = b"".join(b"\x00" + row.tobytes() for row in array)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 53, 37, 8, 2, 0, 0, 0))
    with pytest.raises(ImageError, match="more than"):
        check_png(head + _chunk(b"IDAT", zlib.compress(raw + b"\x00" * 200)) + _chunk(b"IEND", b""), 4096)
    with pytest.raises(ImageError, match="no IEND"):
        check_png(head + _chunk(b"IDAT", zlib.compress(raw)), 4096)


def test_real_photos_are_accepted_and_decode_as_pillow_decodes_them(real_photos_dir):
    checked = 0
    for material in sorted(os.listdir(real_photos_dir)):
        folder = os.path.join(real_photos_dir, material)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder))[:2]:
            with open(os.path.join(folder, name), "rb") as handle:
                data = handle.read()
            assert np.array_equal(decode_image(data, 4096), pillow(data)), f"{material}/{name}"
            checked += 1
    assert checked > 0
