"""A glTF 2.0 material from the SVBRDF maps: one textured square so Blender and three.js show it.

Conventions (glTF 2.0 core, what three.js' GLTFLoader and Blender's importer read):
  * baseColorTexture: `basecolor.png`, sRGB (the executor's basecolor is sRGB-encoded: the
    renderer linearises it with gamma 2.2).
  * metallicRoughnessTexture: `metallic_roughness.png`, linear, G = roughness, B = metallic, R = 255
    (unused). glTF's roughness is perceptual (alpha = roughness²), as the renderer's.
  * normalTexture: `normal.png`, tangent space, OpenGL convention (+X right, +Y up in the image, as
    glTF specifies; the executor's `normal_from_height` writes exactly this), scale 1.
  * height: glTF core has no displacement; `height.png` (linear, 0.5 = mid) is listed as a texture and
    named in the material's `extras.matrl.heightTexture` (index into `textures`) for tools that want it
    (Blender: a Displacement node; three.js: `displacementMap`).
  * the mesh is a 1 x 1 square in the XY plane facing +Z, UV (0,0) at the image's top-left corner,
    with explicit normals and tangents (+X, w = 1) so the normal map's +Y is the image's up.
  * samplers repeat: every map tiles.
The vertex data lives in the .gltf itself as a base64 data URI, so the material is the .gltf plus
its PNGs beside it.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FLOAT, UNSIGNED_SHORT = 5126, 5123
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, REPEAT = 9729, 9987, 10497

# x, y, z | nx, ny, nz | tx, ty, tz, tw | u, v   (counter-clockwise seen from +Z)
_VERTICES = [
    (-0.5, -0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0),
    (0.5, -0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0),
    (0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0),
    (-0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0),
]
_INDICES = (0, 1, 2, 0, 2, 3)


def pack_metallic_roughness(roughness: np.ndarray, metallic: np.ndarray) -> np.ndarray:
    """(H, W) uint8 roughness and metallic -> (H, W, 3) uint8 with R = 255, G = roughness, B = metallic."""
    return np.stack([np.full_like(roughness, 255), roughness, metallic], axis=-1)


def _mesh_buffer() -> tuple[bytes, list[dict], list[dict]]:
    columns = np.asarray(_VERTICES, dtype=np.float32)
    parts = [columns[:, 0:3], columns[:, 3:6], columns[:, 6:10], columns[:, 10:12]]
    blobs = [np.ascontiguousarray(p).tobytes() for p in parts] + [struct.pack("<6H", *_INDICES)]
    views, accessors, offset = [], [], 0
    types = ("VEC3", "VEC3", "VEC4", "VEC2")
    for i, blob in enumerate(blobs):
        target = ELEMENT_ARRAY_BUFFER if i == 4 else ARRAY_BUFFER
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target})
        if i < 4:
            accessor = {"bufferView": i, "componentType": FLOAT, "count": 4, "type": types[i]}
            if i == 0:
                accessor.update(min=parts[0].min(0).tolist(), max=parts[0].max(0).tolist())
        else:
            accessor = {"bufferView": i, "componentType": UNSIGNED_SHORT, "count": 6, "type": "SCALAR"}
        accessors.append(accessor)
        offset += len(blob)
        offset += (-offset) % 4  # 4-byte alignment of the next view
    data = b"".join(blob + b"\0" * ((-len(blob)) % 4) for blob in blobs)
    return data, views, accessors


def write_gltf(out_dir: str | Path, name: str = "material", *, basecolor: str = "basecolor.png",
               normal: str = "normal.png", roughness: str = "roughness.png", metallic: str = "metallic.png",
               height: str = "height.png") -> Path:
    """Write `<name>.gltf` and `metallic_roughness.png` into `out_dir`, next to the map PNGs (written by
    `matrl.commands.render.render_to_dir`) that it references; returns the .gltf path."""
    out_dir = Path(out_dir)
    for file in (basecolor, normal, roughness, metallic, height):
        if not (out_dir / file).is_file():
            raise FileNotFoundError(f"{out_dir / file}: map missing, the glTF would reference nothing")
    with Image.open(out_dir / roughness) as r, Image.open(out_dir / metallic) as m:
        packed = pack_metallic_roughness(np.asarray(r.convert("L")), np.asarray(m.convert("L")))
    Image.fromarray(packed, "RGB").save(out_dir / "metallic_roughness.png")
    data, views, accessors = _mesh_buffer()
    images = [basecolor, "metallic_roughness.png", normal, height]
    doc = {
        "asset": {"version": "2.0", "generator": "matrl infer"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{
            "attributes": {"POSITION": 0, "NORMAL": 1, "TANGENT": 2, "TEXCOORD_0": 3},
            "indices": 4, "material": 0}]}],
        "materials": [{
            "name": name,
            "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicRoughnessTexture": {"index": 1},
                                     "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 1.0,
                                     "roughnessFactor": 1.0},
            "normalTexture": {"index": 2, "scale": 1.0},
            "doubleSided": False,
            "extras": {"matrl": {"heightTexture": 3, "heightMid": 0.5,
                                 "note": "height (linear, 0.5 = mid level): not part of glTF core; "
                                         "use as a displacement / bump map"}},
        }],
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": REPEAT, "wrapT": REPEAT}],
        "images": [{"uri": uri, "mimeType": "image/png"} for uri in images],
        "textures": [{"source": i, "sampler": 0} for i in range(len(images))],
        "buffers": [{"byteLength": len(data),
                     "uri": "data:application/octet-stream;base64," + base64.b64encode(data).decode()}],
        "bufferViews": views,
        "accessors": accessors,
    }
    path = out_dir / f"{name}.gltf"
    path.write_text(json.dumps(doc, indent=1))
    return path
