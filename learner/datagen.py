"""Generate the synthetic dataset: sample parameters of every structure, render, reject, write shards.

Work is cut into units of (graph, shard index). `render_unit` is a plain function that renders one
unit and writes its shard atomically; `generate` fans units out as Ray tasks (or runs them in this
process) and skips units whose shard already exists, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from graph_executor.degeneracy import DegeneracyConfig, material_degeneracy
from graph_executor.errors import GraphError
from graph_executor.executor import SUPPORTED_RES, Plan
from graph_executor.ir import Graph, load_graph, loads_graph
from graph_executor.library import library_graphs, resolve_graph
from graph_executor.render import render_flash
from graph_executor.sampling import sample_parameters
from learner.dataset import (DatasetError, DatasetManifest, GraphEntry, SampleRecord, SplitFractions,
                             assign_splits, check_graph_id, encode_png, image_to_uint8, load_manifest,
                             graph_path, remove_partial_files, save_graph, save_manifest, shard_path, unit_seed,
                             write_shard)
from policy.tokenizer import GraphTokenizer

UNIT_METADATA_KEY = b"matrl.unit"


class GenDataConfig(BaseModel):
    """One dataset request; a resumed run must repeat it exactly."""

    out: Path
    per_graph: int = Field(gt=0)
    res: int = 256
    shard_size: int = Field(256, gt=0)
    seed: int = 0
    fractions: SplitFractions = SplitFractions()
    batch_size: int = Field(16, gt=0, description="parameter sets rendered together")
    max_attempts: float = Field(4.0, ge=1, description="draws per kept sample before a unit gives up")

    def manifest(self, graphs: dict[str, tuple[Graph, str]]) -> DatasetManifest:
        hashes = {gid: g.structure_hash() for gid, (g, _) in graphs.items()}
        splits = assign_splits(hashes.values(), self.fractions, self.seed)
        return DatasetManifest(
            res=self.res, per_graph=self.per_graph, shard_size=self.shard_size, seed=self.seed,
            fractions=self.fractions,
            graphs={gid: GraphEntry(structure_hash=hashes[gid], split=splits[hashes[gid]], source=src)
                    for gid, (_, src) in graphs.items()})


@dataclass
class UnitReport:
    """What one unit produced: kept samples and why the others were rejected."""

    graph_id: str
    shard: int
    split: str
    kept: int
    wanted: int
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Unit:
    graph_id: str
    graph_json: str
    structure_hash: str
    split: str
    shard: int
    first_index: int
    wanted: int
    seed: int
    res: int
    batch_size: int
    max_attempts: float
    path: str


def render_unit(unit: Unit) -> UnitReport:
    """Render one unit's samples, drop degenerate ones, and write its shard atomically.

    Images are rendered from the de-quantised tokens, so the tokens describe the image exactly.
    A batch that fails to execute is counted as rejected, never written.
    """
    start = time.perf_counter()
    graph = loads_graph(unit.graph_json)
    plan = Plan(graph)
    tokenizer = GraphTokenizer(graph)
    budget = max(unit.wanted, int(unit.wanted * unit.max_attempts))
    draws = sample_parameters(graph, budget, unit.seed)
    rejected: Counter[str] = Counter()
    records: list[SampleRecord] = []
    for lo in range(0, budget, unit.batch_size):
        if len(records) >= unit.wanted:
            break
        batch = draws[lo:lo + unit.batch_size]
        tokens = [tokenizer.tokenize(p) for p in batch]
        params = [tokenizer.detokenize(t) for t in tokens]
        seeds = [(unit.seed + 7919 * (lo + i)) & 0x7FFFFFFF for i in range(len(batch))]
        try:
            maps = plan.run(plan.stack(params), res=unit.res, seed=seeds)
            images = render_flash(maps)
        except (GraphError, RuntimeError) as exc:
            rejected[f"error: {type(exc).__name__}"] += len(batch)
            continue
        for i, reason in enumerate(material_degeneracy(maps, images, DegeneracyConfig())):
            if reason is not None:
                rejected[reason] += 1
            elif len(records) < unit.wanted:
                records.append(SampleRecord(
                    graph_id=unit.graph_id, structure_hash=unit.structure_hash, split=unit.split,
                    sample_index=unit.first_index + len(records), seed=seeds[i], tokens=tokens[i],
                    params=params[i], image=encode_png(image_to_uint8(images[i]))))
    report = UnitReport(unit.graph_id, unit.shard, unit.split, len(records), unit.wanted, dict(rejected),
                        time.perf_counter() - start)
    write_shard(unit.path, records, metadata={UNIT_METADATA_KEY: json.dumps(asdict(report)).encode()})
    return report


def _render_unit_task(unit: Unit) -> UnitReport:
    torch.set_num_threads(1)
    return render_unit(unit)


def read_unit_report(path: str | Path) -> UnitReport:
    meta = pq.read_schema(path).metadata or {}
    if UNIT_METADATA_KEY not in meta:
        raise DatasetError(f"{path} carries no unit report: not written by gen-data")
    return UnitReport(**json.loads(meta[UNIT_METADATA_KEY]))


def collect_graphs(source: str) -> dict[str, tuple[Graph, str]]:
    """Graphs by id from `library` (the bundled library), a directory of graph JSON files, or a
    comma-separated list of library names and JSON paths."""
    if source == "library":
        return {gid: (g, "library") for gid, g in library_graphs().items()}
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise DatasetError(f"--graphs {source}: the directory holds no *.json graph files")
        return {check_graph_id(f.stem): (load_graph(f), "file") for f in files}
    graphs = {}
    for ref in filter(None, (part.strip() for part in source.split(","))):
        graph = resolve_graph(ref)
        gid = check_graph_id(Path(ref).stem if ref.endswith(".json") else ref)
        graphs[gid] = (graph, "file" if ref.endswith(".json") else "library")
    return graphs


def with_generated_graphs(graphs: dict[str, tuple[Graph, str]], count: int,
                          seed: int) -> dict[str, tuple[Graph, str]]:
    """`graphs` plus `count` random structures from the structure generator, ids `gen_00000`..."""
    if count <= 0:
        return graphs
    from graph_executor.random_graphs import random_graphs

    out = dict(graphs)
    for i, graph in enumerate(random_graphs(count, seed)):
        out[f"gen_{i:05d}"] = (graph, "generated")
    return out


def prepare(config: GenDataConfig, graphs: dict[str, tuple[Graph, str]]) -> DatasetManifest:
    """Create the dataset directory, or check that an existing one asked for the same thing."""
    if config.res not in SUPPORTED_RES:
        raise DatasetError(f"--res {config.res} is not supported; use one of {list(SUPPORTED_RES)}")
    if not graphs:
        raise DatasetError("no graphs to sample: the graph source is empty")
    for gid in graphs:
        check_graph_id(gid)
    manifest = config.manifest(graphs)
    out = Path(config.out)
    if (out / "manifest.json").exists():
        existing = load_manifest(out)
        if existing.model_dump() != manifest.model_dump():
            raise DatasetError(f"{out} holds a dataset made with other settings or graphs; "
                               "resume with the same arguments or choose a new --out")
        for gid, (graph, _) in graphs.items():
            if load_graph(graph_path(out, gid)).to_dict() != graph.to_dict():
                raise DatasetError(f"graph {gid!r} changed since {out} was started; "
                                   "finish it with the graphs it was started with or choose a new --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        for gid, (graph, _) in graphs.items():
            save_graph(out, gid, graph)
        save_manifest(out, manifest)
    return manifest


def pending_units(config: GenDataConfig, graphs: dict[str, tuple[Graph, str]],
                  manifest: DatasetManifest) -> tuple[list[Unit], int]:
    """Units whose shard does not exist yet, and how many are already done."""
    todo, done = [], 0
    for gid, shard in manifest.units():
        entry = manifest.graphs[gid]
        path = shard_path(config.out, entry.split, gid, shard)
        if path.exists():
            done += 1
            continue
        todo.append(Unit(gid, graphs[gid][0].to_json(), entry.structure_hash, entry.split, shard,
                         shard * manifest.shard_size, manifest.unit_size(shard), unit_seed(config.seed, gid, shard), config.res,
                         config.batch_size, config.max_attempts, str(path)))
    return todo, done


@dataclass
class GenDataSummary:
    units_total: int
    units_skipped: int
    reports: list[UnitReport]

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.reports)

    @property
    def rejected(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in self.reports:
            total.update(r.rejected)
        return dict(total)


def _run_in_process(units: Iterable[Unit], on_done: Callable[[UnitReport], None]) -> None:
    for unit in units:
        on_done(render_unit(unit))


def _run_on_ray(units: list[Unit], on_done: Callable[[UnitReport], None], in_flight: int) -> None:
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(_render_unit_task)
    queue = list(reversed(units))
    running = []
    while queue or running:
        while queue and len(running) < in_flight:
            running.append(task.remote(queue.pop()))
        finished, running = ray.wait(running, num_returns=1)
        on_done(ray.get(finished[0]))


def generate(config: GenDataConfig, graphs: dict[str, tuple[Graph, str]], use_ray: bool = True,
             num_cpus: int | None = None, progress: bool = True) -> GenDataSummary:
    """Render every pending unit: Ray tasks when `use_ray` (on the running Ray, else a new local
    one with `num_cpus`), otherwise one after another in this process."""
    manifest = prepare(config, graphs)
    remove_partial_files(config.out)
    todo, done = pending_units(config, graphs, manifest)
    reports: list[UnitReport] = []
    bar = tqdm(total=done + len(todo), initial=done, unit="shard", desc="gen-data", disable=not progress)

    def on_done(report: UnitReport) -> None:
        reports.append(report)
        bar.update(1)
        bar.set_postfix(kept=sum(r.kept for r in reports))

    try:
        if use_ray and todo:
            import ray

            started_here = not ray.is_initialized()
            if started_here:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            try:
                in_flight = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
                _run_on_ray(todo, on_done, in_flight)
            finally:
                if started_here:
                    ray.shutdown()
        else:
            _run_in_process(todo, on_done)
    finally:
        bar.close()
    return GenDataSummary(len(manifest.units()), done, reports)
