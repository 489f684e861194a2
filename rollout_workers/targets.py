"""Target sources for RL: what the policy is asked to match, and with which graph structures.

A `Target` is an image plus the structures the policy may use for it:
  * synthetic targets (paper §5.1) come with their true structure: rows of a dataset written by
    `matrl gen-data` (`DatasetTargets`), or renders made on the fly from parameter draws of a set
    of graphs (`RenderedTargets`, deterministic per seed and index, so no data needs storing);
  * real photos (paper §5.2) come with the k = 5 structures retrieved for them from the library
    (`PhotoTargets`); a rollout draws one of the k at random per target.
`MixedTargets` draws each target from one source with fixed probabilities (the paper's 50/50
synthetic/real mix). `build_targets(config)` makes a source from a serialisable config, so a Ray
actor builds its own (reading the dataset or photos where it runs).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from graph_executor.ir import Graph


@dataclass(frozen=True)
class Structure:
    structure_id: str   # library name ("red_bricks") or a dataset / generated id
    graph_json: str
    library: bool       # a bundled library graph: the reward service can take "lib:<name>"

    @property
    def reward_structure(self) -> str:
        """How the reward service's ScoreRequest names it."""
        return f"lib:{self.structure_id}" if self.library else self.graph_json


@dataclass
class Target:
    target_id: str
    kind: str                       # "synthetic" | "real"
    image: np.ndarray               # (H, W, 3) uint8
    structures: list[Structure]     # the true one (synthetic) or the k retrieved (real)

    def png(self) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.image, "RGB").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


class TargetSource(Protocol):
    def draw(self, rng: np.random.Generator, n: int) -> list[Target]: ...

    def fixed(self, n: int) -> list[Target]:
        """The same `n` targets every time (validation)."""
        ...


def _structure(graph_id: str, graph: Graph, library_names: set[str]) -> Structure:
    return Structure(graph_id, graph.to_json(), graph_id in library_names)


def _library_names() -> set[str]:
    from graph_executor.library import library_names

    return set(library_names())


class RenderedTargets:
    """Targets rendered on the fly from parameter draws of `graphs` (graph_executor.sampling).

    Target i of seed s is a pure function of (s, i): the structure is graph (i mod G) of a seeded
    permutation, its parameters the sampler's draw (s, i), its executor seed derived from both.
    """

    def __init__(self, graphs: dict[str, Graph], res: int = 64, seed: int = 0, cache: int = 4096):
        if not graphs:
            raise ValueError("RenderedTargets needs at least one graph")
        self.ids = sorted(graphs)
        self.graphs = graphs
        self.res = res
        self.seed = seed
        names = _library_names()
        self.structures = {gid: _structure(gid, graphs[gid], names) for gid in self.ids}
        self._plans: dict = {}
        self._cache: dict[int, Target] = {}
        self._cache_size = cache

    def target(self, index: int) -> Target:
        if index in self._cache:
            return self._cache[index]
        import torch

        from graph_executor.executor import Plan
        from graph_executor.render import render_flash
        from graph_executor.sampling import sample_parameters

        order = np.random.default_rng([self.seed & 0xFFFFFFFF, 7]).permutation(len(self.ids))
        gid = self.ids[order[index % len(self.ids)]]
        graph = self.graphs[gid]
        params = sample_parameters(graph, 1, seed=(self.seed * 1_000_003 + index) & 0x7FFFFFFF)[0]
        plan = self._plans.get(gid) or self._plans.setdefault(gid, Plan(graph))
        with torch.no_grad():
            maps = plan.run(plan.stack([params]), res=self.res, seed=(self.seed * 7919 + index) & 0x7FFFFFFF)
            image = render_flash(maps)[0]
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        target = Target(f"render/{self.seed}/{index}/{gid}", "synthetic", array, [self.structures[gid]])
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = target
        return target

    def draw(self, rng: np.random.Generator, n: int) -> list[Target]:
        return [self.target(int(i)) for i in rng.integers(0, 2**31 - 1, size=n)]

    def fixed(self, n: int) -> list[Target]:
        return [self.target(i) for i in range(n)]


class DatasetTargets:
    """Rows of a `matrl gen-data` dataset split, each with its true structure."""

    def __init__(self, root: str | Path, split: str = "train", graph_ids: Sequence[str] | None = None):
        from learner.dataset import SyntheticDataset, load_graphs

        graphs = load_graphs(root)
        self.data = SyntheticDataset(root, split, graph_ids)
        if len(self.data) == 0:
            raise ValueError(f"{root}: split {split!r} holds no samples for RL targets")
        names = _library_names()
        self.structures = {gid: _structure(gid, g, names) for gid, g in graphs.items()}
        self.split = split

    def target(self, row: int) -> Target:
        item = self.data[row]
        image = (item["image"].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        gid = item["graph_id"]
        return Target(f"{self.split}/{row}/{gid}", "synthetic", image, [self.structures[gid]])

    def draw(self, rng: np.random.Generator, n: int) -> list[Target]:
        return [self.target(int(i)) for i in rng.integers(0, len(self.data), size=n)]

    def fixed(self, n: int) -> list[Target]:
        rows = np.random.default_rng(12345).permutation(len(self.data))[:n]
        return [self.target(int(r)) for r in sorted(rows)]


class PhotoError(ValueError):
    """A photo that cannot be used: missing, empty, huge, corrupt or of an unsupported format; names the file."""


MAX_PHOTO_BYTES = 256 << 20
MAX_PHOTO_PIXELS = 120_000_000  # a 120-megapixel photo decodes to ~360 MB of RGB; beyond, refuse
MIN_PHOTO_SIDE = 16


def read_photo(path: str | Path):
    """A photo file as an RGB PIL image with its EXIF orientation applied; any problem raises PhotoError
    naming the file (checked before decoding: existence, empty, byte size, pixel count)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise PhotoError(f"{path}: no such file")
    if not path.is_file():
        raise PhotoError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise PhotoError(f"{path}: empty file")
    if size > MAX_PHOTO_BYTES:
        raise PhotoError(f"{path}: {size} bytes, more than the {MAX_PHOTO_BYTES >> 20} MiB accepted")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PHOTO_PIXELS:
                raise PhotoError(f"{path}: {w}x{h} pixels, more than the {MAX_PHOTO_PIXELS // 10**6} megapixels "
                                 "accepted; downscale it first")
            if min(w, h) < MIN_PHOTO_SIDE:
                raise PhotoError(f"{path}: {w}x{h} pixels, a side below {MIN_PHOTO_SIDE} is too small to match")
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except PhotoError:
        raise
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image in a supported format (PNG, JPEG, TIFF, WebP, BMP, ...)") from None
    except Image.DecompressionBombError as err:
        raise PhotoError(f"{path}: refused as too large to decode ({err})") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise PhotoError(f"{path}: corrupt or unreadable image ({type(err).__name__}: {err})") from None


def square_crop(image, res: int) -> np.ndarray:
    """A PIL image centre-cropped to a square and resized (Lanczos) to (res, res, 3) uint8."""
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return np.asarray(image.resize((res, res), Image.Resampling.LANCZOS))


def load_photo(path: str | Path, res: int) -> np.ndarray:
    """A photo as (res, res, 3) uint8: EXIF orientation applied, centre-cropped square, resized."""
    return square_crop(read_photo(path), res)


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


class PhotoTargets:
    """Real photos, each with the k library structures retrieved for it (paper §5.2, k = 5)."""

    def __init__(self, photos: Sequence[str | Path], index, k: int = 5, res: int = 256,
                 graphs: dict[str, Graph] | None = None):
        from graph_executor.library import library_graphs

        if not photos:
            raise ValueError("PhotoTargets needs at least one photo")
        graphs = graphs or library_graphs()
        names = _library_names()
        self.targets: list[Target] = []
        for path in sorted(Path(p) for p in photos):
            image = load_photo(path, res)
            retrieved = index.retrieve(image, k=k)
            structures = [_structure(r.structure_id, graphs[r.structure_id], names) for r in retrieved]
            digest = hashlib.sha1(path.read_bytes()).hexdigest()[:10]
            self.targets.append(Target(f"photo/{path.parent.name}/{path.stem}/{digest}", "real", image, structures))

    @staticmethod
    def find(root: str | Path) -> list[Path]:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"photo directory {root} does not exist")
        return sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)

    def draw(self, rng: np.random.Generator, n: int) -> list[Target]:
        return [self.targets[int(i)] for i in rng.integers(0, len(self.targets), size=n)]

    def fixed(self, n: int) -> list[Target]:
        rows = np.random.default_rng(12345).permutation(len(self.targets))[:n]
        return [self.targets[int(r)] for r in sorted(rows)]


class MixedTargets:
    """Each target from source j with probability weights[j] (e.g. 50 % synthetic, 50 % real)."""

    def __init__(self, sources: Sequence[TargetSource], weights: Sequence[float]):
        if len(sources) != len(weights) or not sources:
            raise ValueError("MixedTargets needs one weight per source")
        total = float(sum(weights))
        if total <= 0 or min(weights) < 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {list(weights)}")
        self.sources = list(sources)
        self.p = np.asarray(weights, dtype=float) / total

    def draw(self, rng: np.random.Generator, n: int) -> list[Target]:
        choice = rng.choice(len(self.sources), size=n, p=self.p)
        out: list[Target | None] = [None] * n
        for j, source in enumerate(self.sources):
            slots = np.nonzero(choice == j)[0]
            if slots.size:
                for slot, target in zip(slots, source.draw(rng, int(slots.size))):
                    out[int(slot)] = target
        return out  # type: ignore[return-value]

    def fixed(self, n: int) -> list[Target]:
        counts = np.floor(self.p * n).astype(int)
        counts[int(np.argmax(self.p))] += n - counts.sum()
        return [t for source, c in zip(self.sources, counts) if c for t in source.fixed(int(c))]


# ---- configs ----------------------------------------------------------------------------------

class SyntheticTargetsConfig(BaseModel):
    """Synthetic targets: a dataset split (`source: dataset`) or on-the-fly renders of graphs."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["render", "dataset"] = "render"
    graphs: list[str] | None = Field(None, description="render: library graph names (None: the whole library)")
    dataset: Path | None = Field(None, description="dataset: the root written by `matrl gen-data`")
    split: str = "train"
    res: int = Field(64, description="render: target resolution")
    seed: int = Field(0, description="render: which stream of parameter draws")


class RealTargetsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photos: Path | None = Field(None, description="directory of photos (searched recursively)")
    index: Path | None = Field(None, description="retrieval index (None: the bundled library index)")
    k: int = Field(5, ge=1, description="structures retrieved per photo")
    res: int = Field(256, description="photos are centre-cropped and resized to this side")


class TargetsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    synthetic: SyntheticTargetsConfig = SyntheticTargetsConfig()
    real: RealTargetsConfig = RealTargetsConfig()
    real_fraction: float = Field(0.0, ge=0, le=1, description="probability that a target is a real photo")

    @model_validator(mode="after")
    def _check(self) -> "TargetsConfig":
        if self.real_fraction > 0 and self.real.photos is None:
            raise ValueError("real_fraction > 0 needs real.photos (a directory of photos)")
        if self.synthetic.source == "dataset" and self.synthetic.dataset is None and self.real_fraction < 1:
            raise ValueError("synthetic.source 'dataset' needs synthetic.dataset (a gen-data directory)")
        return self


def build_targets(config: TargetsConfig, retrieval_index=None) -> TargetSource:
    """The target source a config describes (photos need `retrieval_index` or the bundled one)."""
    sources, weights = [], []
    if config.real_fraction < 1:
        syn = config.synthetic
        if syn.source == "dataset":
            sources.append(DatasetTargets(syn.dataset, syn.split, syn.graphs))
        else:
            from graph_executor.library import library_graphs, load_library_graph

            graphs = ({name: load_library_graph(name) for name in syn.graphs} if syn.graphs
                      else library_graphs())
            sources.append(RenderedTargets(graphs, syn.res, syn.seed))
        weights.append(1 - config.real_fraction)
    if config.real_fraction > 0:
        index = retrieval_index
        if index is None:
            from policy.retrieval import RetrievalIndex, default_index

            index = RetrievalIndex.load(config.real.index) if config.real.index else default_index()
        sources.append(PhotoTargets(PhotoTargets.find(config.real.photos), index, config.real.k, config.real.res))
        weights.append(config.real_fraction)
    return sources[0] if len(sources) == 1 else MixedTargets(sources, weights)
