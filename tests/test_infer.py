"""`matrl infer`: a library render goes in; the best candidate beats the random floor and every promised
file is written (the glTF parses and references existing textures; graph.json re-renders to render.png).
Photo loading (EXIF, aspect ratios, quad rectification, bad files) and the checkpoint default."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graph_executor.executor import Plan
from graph_executor.library import load_library_graph
from graph_executor.render import render_flash
from matrl.cli import main
from matrl.infer.photo import PhotoError, load_photo, parse_quad, rectify
from matrl.infer.pipeline import InferConfig, MaterialInference
from policy.checkpoint import released_checkpoint
from policy.checkpoint import CheckpointError, save_checkpoint
from policy.encoders import EncoderConfig
from tests.rl_helpers import tiny_policy

MAPS = ("basecolor", "normal", "roughness", "metallic", "height")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny policy: with retrieval and ranking it must still beat the floor."""
    torch.set_num_threads(1)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", tiny_policy(0),
                           encoder=EncoderConfig().model_dump())


def _render(name: str, res: int = 256, seed: int = 3) -> np.ndarray:
    plan = Plan(load_library_graph(name))
    with torch.no_grad():
        image = render_flash(plan.run(plan.stack(), res=res, seed=seed))[0]
    return (image.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def library_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "red_bricks.png"
    Image.fromarray(_render("red_bricks")).save(path)
    return path


def test_infer_on_a_library_render_beats_the_random_floor_and_writes_every_file(checkpoint, library_photo, tmp_path,
                                                                                   capsys):
    out = tmp_path / "out"
    assert main(["infer", str(library_photo), "--checkpoint", str(checkpoint), "--res", "128",
                 "--match-res", "128", "-o", str(out)]) == 0
    assert "best:" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_reward"] > summary["random_floor_reward"]
    assert len(summary["candidates"]) == 25 == len({json.dumps(c, sort_keys=True) for c in summary["candidates"]})
    assert sum(c["kind"] == "greedy" for c in summary["candidates"]) == 5
    assert summary["best_reward"] == max(c["reward"] for c in summary["candidates"])
    for phase in ("load", "encode", "retrieve", "sample", "execute", "render", "reward", "floor", "write", "total"):
        assert summary["timings_s"][phase] >= 0, phase
    for name in ("graph.json", "render.png", "target.png", "side_by_side.png", "material.gltf",
                 "metallic_roughness.png", *(f"{m}.png" for m in MAPS)):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for m in (*MAPS, "render"):
        assert Image.open(out / f"{m}.png").size == (128, 128), m

    # graph.json is the best structure with its parameters: `matrl render` reproduces render.png
    graph = json.loads((out / "graph.json").read_text())
    assert graph["name"] == summary["best"]["structure"]
    again = tmp_path / "again"
    assert main(["render", str(out / "graph.json"), "--res", "128", "--seed", str(summary["seed"]), "-o", str(again)]) == 0
    for m in (*MAPS, "render"):
        assert np.array_equal(np.asarray(Image.open(again / f"{m}.png")), np.asarray(Image.open(out / f"{m}.png"))), m


def test_gltf_parses_and_references_existing_textures(checkpoint, library_photo, tmp_path):
    pygltflib = pytest.importorskip("pygltflib", reason="pygltflib is a dev dependency (pyproject [dev])")
    engine = MaterialInference(checkpoint, InferConfig(structures=2, samples=2, res=64, out_res=64, floor_samples=2))
    out = tmp_path / "out"
    engine.write(engine.infer(library_photo), out)
    gltf = pygltflib.GLTF2().load(str(out / "material.gltf"))
    assert gltf.asset.version == "2.0"
    material = gltf.materials[0]
    pbr = material.pbrMetallicRoughness
    uris = [gltf.images[gltf.textures[i].source].uri for i in
            (pbr.baseColorTexture.index, pbr.metallicRoughnessTexture.index, material.normalTexture.index,
             material.extras["matrl"]["heightTexture"])]
    assert uris == ["basecolor.png", "metallic_roughness.png", "normal.png", "height.png"]
    for image in gltf.images:
        assert (out / image.uri).is_file(), image.uri
    packed = np.asarray(Image.open(out / "metallic_roughness.png"))
    assert np.array_equal(packed[..., 1], np.asarray(Image.open(out / "roughness.png")))  # G = roughness
    assert np.array_equal(packed[..., 2], np.asarray(Image.open(out / "metallic.png")))   # B = metallic
    assert gltf.samplers[0].wrapS == gltf.samplers[0].wrapT == 10497  # REPEAT: the maps tile
    primitive = gltf.meshes[0].primitives[0]
    assert primitive.material == 0 and primitive.attributes.TANGENT is not None
    data = gltf.binary_blob() or gltf.decode_data_uri(gltf.buffers[0].uri)
    assert len(data) == gltf.buffers[0].byteLength
    for view in gltf.bufferViews:
        assert view.byteOffset + view.byteLength <= len(data)


def test_refine_through_the_pipeline_keeps_the_best_and_writes_it(checkpoint, library_photo, tmp_path):
    engine = MaterialInference(checkpoint, InferConfig(structures=1, samples=2, res=64, out_res=64, floor_samples=2,
                                                       refine_s=4.0))
    result = engine.infer(library_photo)
    assert result.refine is not None
    assert result.refine["reward"] >= result.refine["start_reward"]
    assert result.best_reward >= result.best.reward
    engine.write(result, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["refine"]["history"][-1][1] == summary["refine"]["reward"]
    assert summary["best_reward"] == pytest.approx(max(summary["refine"]["reward"], result.best.reward))


@pytest.mark.slow
def test_infer_on_real_photos_beats_the_random_floor(checkpoint, real_photos_dir, tmp_path):
    """Real flash photos (never copied: read from ../shared or MATRL_REAL_PHOTOS), JPEG, 512²."""
    engine = MaterialInference(checkpoint, InferConfig(out_res=128))
    for material in ("wood-alder", "stone-smalltile", "leather-blue"):
        photo = Path(real_photos_dir) / material / "4.jpg"
        if not photo.is_file():
            pytest.skip(f"{photo} is absent")
        result = engine.infer(photo)
        assert result.best_reward > result.random_floor_reward, material
        engine.write(result, tmp_path / material)
        assert (tmp_path / material / "summary.json").is_file()


# ---- photos ----------------------------------------------------------------------------------

def _pattern(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x // 8 + y // 8) % 2) * 255],
                    -1).astype(np.uint8)


def test_photos_of_any_aspect_ratio_are_centre_cropped(tmp_path):
    wide = _pattern(300, 100)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = load_photo(tmp_path / "wide.png", 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(wide[:, 100:200]).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(out, expected)


def test_exif_orientation_is_honoured(tmp_path):
    raw = _pattern(120, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    Image.fromarray(raw).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(np.rot90(raw, k=-1).copy()).save(tmp_path / "upright.jpg", quality=95)
    a = load_photo(tmp_path / "rotated.jpg", 32).astype(int)
    b = load_photo(tmp_path / "upright.jpg", 32).astype(int)
    assert np.abs(a - b).mean() < 6  # JPEG noise only
    no_exif = np.asarray(Image.fromarray(raw[:, 30:90]).resize((32, 32))).astype(int)
    assert np.abs(a - no_exif).mean() > 20  # ignoring EXIF would give another picture


def test_quad_rectification_undoes_a_perspective_view(tmp_path):
    import cv2

    square = _pattern(200, 200)
    corners = np.float32([[40, 30], [260, 60], [240, 250], [60, 220]])
    matrix = cv2.getPerspectiveTransform(np.float32([[0, 0], [199, 0], [199, 199], [0, 199]]), corners)
    photo = cv2.warpPerspective(square, matrix, (300, 280), flags=cv2.INTER_CUBIC)
    Image.fromarray(photo).save(tmp_path / "angled.png")
    quad = parse_quad(",".join(f"{v:g}" for v in corners.reshape(-1)))
    rectified = load_photo(tmp_path / "angled.png", 64, quad).astype(int)
    expected = np.asarray(Image.fromarray(square).resize((64, 64), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(rectified - expected).mean() < 12
    assert np.abs(load_photo(tmp_path / "angled.png", 64).astype(int) - expected).mean() > 30
    with pytest.raises(ValueError, match="convex"):
        rectify(photo, [(40, 30), (240, 250), (260, 60), (60, 220)])  # corners out of order: a bow tie
    with pytest.raises(ValueError, match="8 numbers"):
        parse_quad("1,2,3")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height but holds almost no data (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind,message", [("missing", "no such file"), ("empty", "empty file"),
                                          ("text", "supported format"), ("corrupt", "corrupt"),
                                          ("huge", "megapixels|too large"), ("tiny", "too small")])
def test_bad_photos_get_a_clear_error_naming_the_file(tmp_path, kind, message, checkpoint, capsys):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "corrupt":
        good = tmp_path / "good.png"
        Image.fromarray(_pattern(64, 64)).save(good)
        path.write_bytes(good.read_bytes()[:200])
    elif kind == "huge":
        _png_header_only(path, 20000, 20000)
    elif kind == "tiny":
        Image.fromarray(_pattern(8, 8)).save(path)
    with pytest.raises(PhotoError, match=message) as err:
        load_photo(path, 64)
    assert str(path) in str(err.value)
    assert main(["infer", str(path), "--checkpoint", str(checkpoint), "-o", str(tmp_path / "o")]) == 2
    printed = capsys.readouterr().err.strip()
    assert str(path) in printed and len(printed.splitlines()) == 1


# ---- checkpoints and flags -------------------------------------------------------------------

def test_default_checkpoint_finds_the_one_released_model_or_says_what_to_pass(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="--checkpoint"):
        released_checkpoint(tmp_path / "models")
    models = tmp_path / "models"
    models.mkdir()
    (models / "README.md").write_text("model card")
    with pytest.raises(CheckpointError, match="--checkpoint"):
        released_checkpoint(models)
    import shutil
    shutil.copytree(checkpoint, models / "v1")
    assert released_checkpoint(models) == models / "v1"
    shutil.copytree(checkpoint, models / "v2")
    with pytest.raises(CheckpointError, match="several"):
        released_checkpoint(models)


def test_bad_flags_and_checkpoints_are_one_line_errors(tmp_path, library_photo, capsys):
    assert main(["infer", str(library_photo), "--checkpoint", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["infer", str(library_photo), "--checkpoint", str(tmp_path), "--res", "1000",
                 "-o", str(tmp_path / "o")]) == 2
    assert "power of two" in capsys.readouterr().err
    assert main(["infer", str(library_photo), "--checkpoint", str(tmp_path), "--quad", "1,2",
                 "-o", str(tmp_path / "o")]) == 2
    assert "--quad" in capsys.readouterr().err


def test_padded_slots_sample_the_same_tokens(checkpoint):
    """CUDA pads the slot axis to the sampler's KV bucket so its graphs are reused; greedy tokens of the
    real slots must come out the same as without padding (checked on CPU, where the sampler is eager)."""
    from matrl.infer.pipeline import pad_slots
    from policy.batching import collate
    from policy.checkpoint import load_policy
    from policy.sampler import Sampler, SamplingConfig
    from policy.tokenizer import GraphTokenizer, Vocabulary

    policy, info = load_policy(checkpoint)
    vocab = Vocabulary.from_dict(info.policy.vocab)
    toks = [GraphTokenizer(load_library_graph(n), vocab) for n in ("red_plastic", "red_bricks")]
    batch = collate([t.structure() for t in toks])
    padded = pad_slots(batch, 100)
    assert padded.num_slots % 100 == 0 and padded.num_slots > batch.num_slots
    image = torch.rand(2, policy.config.image_tokens, policy.config.image_token_dim)
    greedy = SamplingConfig(greedy=True)
    plain = Sampler(policy, greedy).sample(batch, image, seed=5).tokens
    wide = Sampler(policy, greedy).sample(padded, image, seed=5).tokens
    assert torch.equal(wide[:, :batch.num_slots], plain) and not wide[:, batch.num_slots:].any()
    # top-p: the uniforms of a seed are laid out per slot count, so the draw differs, but stays valid
    wide = Sampler(policy, SamplingConfig(top_p=0.9)).sample(padded, image, seed=5, samples_per_graph=2).tokens
    assert not wide[:, batch.num_slots:].any()
    for g, tok in enumerate(toks):
        tok.detokenize_batch(wide[2 * g:2 * g + 2, :len(tok)].numpy())  # raises on an invalid token
