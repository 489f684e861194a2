"""The DDP pre-training benchmark: epoch throughput metrics, the scaling table, and a real 1,2-worker run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.pretrain_ddp import WorkerRun, config_overrides, format_table, main, parse_args, scaling_rows
from learner.datagen import GenDataConfig, collect_graphs, generate
from learner.dataset import read_split
from learner.pretrain import EpochMetrics, Pretrainer, PretrainConfig
from matrl.config import load_config
from tests.test_dataset import write_graphs
from tests.test_pretrain import GRAPHS


def epoch(index: int, step: int, samples: int, seconds: float, val_loss: float = 3.0) -> EpochMetrics:
    return EpochMetrics(epoch=index, step=step, train_loss=3.5, val_loss=val_loss, val_token_accuracy=0.2, lr=1e-4,
                        seconds=seconds + 1.0, train_seconds=seconds, train_samples=samples)


def test_scaling_rows_measure_the_last_epoch_against_the_smallest_worker_count():
    runs = [WorkerRun(4, [epoch(1, 4, 1000, 10.0), epoch(2, 8, 1000, 0.5, val_loss=2.5)], wall_s=30.0),
            WorkerRun(2, [epoch(1, 8, 1000, 10.0), epoch(2, 16, 1000, 1.0)], wall_s=40.0)]
    rows = scaling_rows(runs)
    assert [r["workers"] for r in rows] == [2, 4]
    assert rows[0]["samples_per_s"] == pytest.approx(1000.0) and rows[1]["samples_per_s"] == pytest.approx(2000.0)
    assert rows[0]["scaling_efficiency"] == pytest.approx(1.0)
    assert rows[1]["scaling_efficiency"] == pytest.approx(2000.0 / (2 * 1000.0))  # 2x the workers, 2x the rate
    assert rows[1]["steps_per_epoch"] == 4 and rows[1]["val_loss"] == 2.5 and rows[1]["run_seconds"] == 30.0
    assert rows[1]["epoch_seconds"] == pytest.approx(1.5) and len(rows[1]["epochs"]) == 2
    half = scaling_rows([WorkerRun(1, [epoch(1, 10, 100, 1.0)], 5.0), WorkerRun(3, [epoch(1, 4, 150, 1.0)], 5.0)])
    assert half[1]["scaling_efficiency"] == pytest.approx(0.5) and half[1]["steps_per_epoch"] == 4
    table = format_table(rows).splitlines()
    assert len(table) == 3 and "efficiency" in table[0] and "2000.0" in table[2] and "1.000" in table[2]


def test_epoch_metrics_rebuild_from_a_ray_dataframe_row():
    metrics = epoch(2, 16, 250, 2.0)
    row = {k: (np.int64(v) if isinstance(v, int) else np.float64(v)) for k, v in metrics.as_dict().items()}
    rebuilt = EpochMetrics.from_dict({**row, "timestamp": 123, "training_iteration": 2})
    assert rebuilt == metrics and type(rebuilt.train_samples) is int and type(rebuilt.lr) is float
    assert json.dumps(rebuilt.as_dict()) and metrics.samples_per_s == pytest.approx(125.0)


def test_arguments_quick_defaults_and_refused_overrides(tmp_path):
    quick = parse_args(["--quick"])
    assert (quick.config, quick.workers, quick.epochs, quick.generate, quick.res, quick.gpu) == \
        ("tiny", [1, 2], 2, 8, 64, False)
    gpu = parse_args(["--data", str(tmp_path), "--gpu", "--workers", "4,1,2"])
    assert gpu.workers == [1, 2, 4] and gpu.generate is None and gpu.config == "default"
    overrides = config_overrides(gpu, 4, tmp_path / "run", tmp_path)
    assert overrides["distributed.backend"] == "nccl" and "distributed.cpus_per_worker" not in overrides
    cpu = parse_args(["--data", str(tmp_path), "--cpus-per-worker", "3", "--set", "train.batch_size=8"])
    overrides = config_overrides(cpu, 2, tmp_path / "run", tmp_path)
    assert (overrides["distributed.cpus_per_worker"], overrides["distributed.backend"],
            overrides["train.batch_size"], overrides["distributed.num_workers"]) == (3, "gloo", 8, 2)
    with pytest.raises(ValueError, match="--epochs"):
        config_overrides(parse_args(["--quick", "--set", "train.epochs=5"]), 1, tmp_path, tmp_path)
    for bad in (["--workers", "1,2"], ["--quick", "--gpu"], ["--quick", "--workers", "1,x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_bench")
    folder = write_graphs(root / "graphs", GRAPHS)
    generate(GenDataConfig(out=root / "ds", per_graph=8, shard_size=8, res=64), collect_graphs(str(folder)),
             use_ray=False, progress=False)
    return root / "ds"


def test_an_epoch_counts_its_training_rows_and_logs_samples_per_second(small_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config(PretrainConfig, "pretrain", "tiny", {
        "data.root": str(small_dataset), "out_dir": str(tmp_path / "run"), "train.epochs": 1,
        "data.max_train_samples": 20, "data.max_val_samples": 4})
    [metrics] = Pretrainer(config).fit()
    assert metrics.train_samples == 20 and metrics.step == 2  # batches of 16 and 4
    assert 0 < metrics.train_seconds <= metrics.seconds
    [line] = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert EpochMetrics.from_dict(json.loads(line)) == metrics
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    [logged] = events.Scalars("epoch/samples_per_s")
    assert logged.step == 1 and logged.value == pytest.approx(metrics.samples_per_s, rel=1e-5)


@pytest.mark.slow
def test_quick_benchmark_trains_on_one_and_two_cpu_workers(tmp_path, capsys):
    data, train_rows = tmp_path / "data", 101  # odd, so two ranks pad it by one row
    code = main(["--quick", "--json", "--data", str(data), "--generate", "2", "--out", str(tmp_path / "runs"),
                 "--set", f"data.max_train_samples={train_rows}", "--set", "data.max_val_samples=16"])
    assert code == 0
    assert read_split(data, "train").num_rows >= train_rows
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = summary["rows"]
    assert [r["workers"] for r in rows] == [1, 2] and summary["workers"] == [1, 2]
    for row in rows:
        k = row["workers"]
        padded = k * math.ceil(train_rows / k)  # DistributedSampler pads every rank to the same count
        assert [e["train_samples"] for e in row["epochs"]] == [padded, padded], k
        assert row["steps_per_epoch"] == math.ceil(math.ceil(train_rows / k) / 16)  # tiny preset: batch 16
        assert row["samples_per_s"] > 0 and math.isfinite(row["val_loss"]) and math.isfinite(row["train_loss"])
        assert 0 <= row["val_token_accuracy"] <= 1
        assert (tmp_path / "runs" / f"workers_{k}" / "checkpoints" / "epoch_0002" / "model.safetensors").is_file()
    assert summary["scaling_efficiency"] == pytest.approx(rows[1]["samples_per_s"] / (2 * rows[0]["samples_per_s"]))
    assert summary["scaling_efficiency"] > 0
