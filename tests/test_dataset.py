"""Synthetic dataset: split by structure, Parquet shards, resumable generation on Ray, torch views."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.datagen import GenDataConfig, collect_graphs, generate, read_unit_report, with_generated_graphs
from learner.dataset import (SPLITS, DatasetError, SplitFractions, StreamingSyntheticDataset,
                             SyntheticDataset, assign_splits, decode_png, load_graphs, load_manifest,
                             read_split, shard_files)
from matrl.cli import main
from policy.tokenizer import GraphTokenizer


def chain_graph(name: str, levels: int, blend: bool, scale: int = 4) -> dict:
    """A small valid graph; `levels` and `blend` decide its structure, `scale` only its parameters."""
    nodes = {"noise": {"type": "perlin_fbm", "params": {"scale": scale, "octaves": 3}}}
    prev = "noise"
    for i in range(levels):
        nodes[f"lv{i}"] = {"type": "levels", "inputs": {"in": prev}, "params": {"gamma": 1.2}}
        prev = f"lv{i}"
    if blend:
        nodes["detail"] = {"type": "perlin_fbm", "params": {"scale": 8, "octaves": 2, "seed": 3}}
        nodes["mix"] = {"type": "blend", "inputs": {"foreground": prev, "background": "detail"},
                        "params": {"opacity": 0.5}}
        prev = "mix"
    nodes["nrm"] = {"type": "normal_from_height", "inputs": {"height": prev}}
    nodes["output"] = {"type": "output",
                       "inputs": {"basecolor": prev, "normal": "nrm", "roughness": "noise", "height": prev}}
    return {"format": "matrl.graph/1", "name": name, "category": "test", "nodes": nodes}


def write_graphs(folder: Path, specs: list[tuple[str, int, bool, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, levels, blend, scale in specs:
        (folder / f"{name}.json").write_text(json.dumps(chain_graph(name, levels, blend, scale)))
    return folder


# Six graphs, five structures: `twin` shares the structure of `a1` with other parameter values.
SPECS = [("a0", 0, False, 4), ("a1", 1, False, 4), ("twin", 1, False, 9), ("a2", 2, False, 4),
         ("b0", 0, True, 4), ("b1", 1, True, 4)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text("0123456789abcdef", min_size=4, max_size=8), min_size=0, max_size=80),
       st.integers(0, 10))
def test_every_structure_gets_exactly_one_split(hashes, seed):
    splits = assign_splits(hashes, SplitFractions(), seed)
    assert set(splits) == set(hashes)
    assert set(splits.values()) <= set(SPLITS)
    counts = {s: sum(v == s for v in splits.values()) for s in SPLITS}
    if len(set(hashes)) >= 3:
        assert counts["val"] >= 1 and counts["test"] >= 1 and counts["train"] >= 1
    assert assign_splits(list(reversed(hashes)), SplitFractions(), seed) == splits


def test_split_fractions_hold_for_many_structures():
    splits = assign_splits([f"{i:08x}" for i in range(2000)], SplitFractions())
    counts = {s: sum(v == s for v in splits.values()) for s in SPLITS}
    assert counts == {"train": 1800, "val": 100, "test": 100}
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(train=0.9, val=0.2, test=0.05)


def test_gen_data_on_ray_keeps_each_structure_in_one_split(tmp_path, ray_cluster):
    graphs_dir = write_graphs(tmp_path / "graphs", SPECS)
    out = tmp_path / "ds"
    rc = main(["gen-data", "--graphs", str(graphs_dir), "--per-graph", "10", "--shard-size", "4",
               "--res", "64", "--out", str(out), "--batch-size", "5"])
    assert rc == 0
    manifest = load_manifest(out)
    assert manifest.graphs["twin"].structure_hash == manifest.graphs["a1"].structure_hash
    assert manifest.graphs["twin"].split == manifest.graphs["a1"].split
    assert {e.split for e in manifest.graphs.values()} == set(SPLITS)

    structure_splits = defaultdict(set)
    rows_per_graph = defaultdict(int)
    graphs = load_graphs(out)
    for split in SPLITS:
        table = read_split(out, split)
        assert set(table.column("split").to_pylist()) <= {split}
        for row in table.to_pylist():
            structure_splits[row["structure_hash"]].add(split)
            rows_per_graph[row["graph_id"]] += 1
            assert manifest.graphs[row["graph_id"]].split == split
            graph = graphs[row["graph_id"]]
            assert graph.structure_hash() == row["structure_hash"]
            tokenizer = GraphTokenizer(graph)
            assert len(row["tokens"]) == len(tokenizer.slots)
            assert tokenizer.detokenize(row["tokens"]) == json.loads(row["params"])
            image = decode_png(row["image"])
            assert image.shape == (64, 64, 3) and image.std() > 1
    assert all(len(s) == 1 for s in structure_splits.values())
    assert len(structure_splits) == 5
    assert dict(rows_per_graph) == {name: 10 for name, *_ in SPECS}
    assert len(shard_files(out, "train")) + len(shard_files(out, "val")) + len(shard_files(out, "test")) == 18


def test_interrupted_run_resumes_and_reproduces_missing_shards(tmp_path, ray_cluster):
    graphs_dir = write_graphs(tmp_path / "graphs", SPECS[:4])
    config = GenDataConfig(out=tmp_path / "ds", per_graph=6, shard_size=3, res=64, batch_size=3)
    graphs = collect_graphs(str(graphs_dir))
    first = generate(config, graphs, progress=False)
    assert first.units_skipped == 0 and len(first.reports) == 8 and first.kept == 24

    victim = sorted((tmp_path / "ds").glob("*/a2-00001.parquet"))[0]
    original = pq.read_table(victim)
    victim.unlink()
    stale = victim.with_name(f".{victim.name}.tmp-deadbeef")
    stale.write_bytes(b"half a parquet file")

    second = generate(config, graphs, progress=False)
    assert second.units_skipped == 7
    assert [(r.graph_id, r.shard) for r in second.reports] == [("a2", 1)]
    assert not stale.exists()
    assert pq.read_table(victim).equals(original)

    third = generate(config, graphs, progress=False)
    assert third.units_skipped == 8 and third.reports == []

    changed = config.model_copy(update={"res": 128})
    with pytest.raises(DatasetError, match="other settings"):
        generate(changed, graphs, progress=False)
    retuned = dict(graphs, a0=(graphs["a0"][0].with_params({"noise": {"scale": 7}}), "file"))
    with pytest.raises(DatasetError, match="graph 'a0' changed"):
        generate(config, retuned, progress=False)


def test_degenerate_samples_are_rejected_and_counted(tmp_path):
    blank = {"format": "matrl.graph/1", "name": "blank",
             "meta": {"sampling": {"fixed": ["flat.out_low", "flat.out_high"]}},
             "nodes": {"noise": {"type": "perlin_fbm"},
                       "flat": {"type": "levels", "inputs": {"in": "noise"},
                                "params": {"out_low": 0.5, "out_high": 0.5}},
                       "output": {"type": "output", "inputs": {"basecolor": "flat"}}}}
    folder = write_graphs(tmp_path / "graphs", SPECS[:3])
    (folder / "blank.json").write_text(json.dumps(blank))
    config = GenDataConfig(out=tmp_path / "ds", per_graph=4, shard_size=4, res=64, max_attempts=2)
    summary = generate(config, collect_graphs(str(folder)), use_ray=False, progress=False)
    report = next(r for r in summary.reports if r.graph_id == "blank")
    assert report.kept == 0 and report.rejected == {"constant": 8}
    path = next((tmp_path / "ds").glob("*/blank-00000.parquet"))
    assert pq.read_table(path).num_rows == 0
    assert read_unit_report(path) == report
    assert summary.kept == 12


def test_generated_structures_join_the_dataset(tmp_path):
    graphs = with_generated_graphs(collect_graphs(str(write_graphs(tmp_path / "g", SPECS[:1]))), 3, seed=5)
    assert [gid for gid, (_, src) in graphs.items() if src == "generated"] == ["gen_00000", "gen_00001", "gen_00002"]
    config = GenDataConfig(out=tmp_path / "ds", per_graph=2, shard_size=2, res=64)
    summary = generate(config, graphs, use_ray=False, progress=False)
    assert summary.kept == 8
    reloaded = load_graphs(tmp_path / "ds")
    for gid, (graph, _) in graphs.items():
        assert reloaded[gid].to_dict() == graph.to_dict()
    assert load_manifest(tmp_path / "ds").graphs["gen_00001"].source == "generated"


def test_torch_views_cover_each_row_once(tmp_path):
    folder = write_graphs(tmp_path / "graphs", SPECS)
    config = GenDataConfig(out=tmp_path / "ds", per_graph=6, shard_size=2, res=64)
    generate(config, collect_graphs(str(folder)), use_ray=False, progress=False)
    train = SyntheticDataset(tmp_path / "ds", "train")
    assert len(train) == read_split(tmp_path / "ds", "train").num_rows > 0
    item = train[len(train) - 1]
    assert item["image"].shape == (3, 64, 64) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["tokens"].dtype.is_floating_point is False
    with pytest.raises(IndexError):
        train[len(train)]

    seen = []
    for rank in range(2):
        stream = StreamingSyntheticDataset(tmp_path / "ds", "train", shuffle_buffer=4, rank=rank, world_size=2)
        stream.set_epoch(3)
        seen += [(x["graph_id"], x["seed"]) for x in stream]
    expected = [(train[i]["graph_id"], train[i]["seed"]) for i in range(len(train))]
    assert sorted(seen) == sorted(expected)
    assert len(set(seen)) == len(seen)


def test_bad_requests_name_the_culprit(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["gen-data", "--graphs", str(empty), "--per-graph", "2", "--out", str(tmp_path / "x")]) == 2
    assert "holds no *.json" in capsys.readouterr().err
    folder = write_graphs(tmp_path / "graphs", SPECS[:3])
    assert main(["gen-data", "--graphs", str(folder), "--per-graph", "2", "--res", "100",
                 "--out", str(tmp_path / "x"), "--no-ray"]) == 2
    assert "--res 100" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="not a dataset directory"):
        SyntheticDataset(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="unknown split"):
        shard_files(tmp_path, "training")
    (folder / "bad name.json").write_text(json.dumps(chain_graph("x", 0, False)))
    with pytest.raises(DatasetError, match="cannot name a file"):
        generate(GenDataConfig(out=tmp_path / "y", per_graph=1, res=64), collect_graphs(str(folder)),
                 use_ray=False, progress=False)
