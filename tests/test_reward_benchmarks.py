"""The reward benchmarks run end to end on this machine and report what docs/benchmarks.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_json(script: str, *args: str, timeout: float = 600) -> object:
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_reward_worker_scaling_reports_every_point_with_its_time_split():
    rows = run_json("reward_worker_scaling.py", "--quick", "--workers", "1,2", "--configs", "4:noretain")
    assert [(r["workers"], r["micro_batch"], r["retain_freed_memory"]) for r in rows] == \
        [(1, 4, False), (2, 4, False)]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["per_process"] == pytest.approx(r["samples_per_s"] / r["workers"])
        assert r["execute_ms"] > 0 and r["reward_ms"] > 0
        assert 0 < r["efficiency"] < 2
        if r["workers"] == 1:
            assert r["efficiency"] == 1.0


@pytest.mark.slow  # 70 s of Ray and gRPC start-ups; the service paths it drives have their own fast tests
def test_reward_load_measures_raw_service_and_the_compute_control_at_each_worker_count():
    summary = run_json("reward_load.py", "--workers", "1,2", "--duration", "3", "--res", "64", "--micro-batch", "8")
    assert summary["errors"] == 0
    assert summary["micro_batch"] == 8 and summary["res"] == 64
    assert summary["samples_per_s"] > 0 and summary["raw_executor_samples_per_s"] > 0
    assert [row["workers"] for row in summary["per_workers"]] == [1, 2]
    assert all(row["compute_control_per_process"] > 0 for row in summary["per_workers"])
    at_two = summary["scaling_by_workers"]["2"]
    assert set(at_two) == {"service", "raw", "compute_control"}
    assert at_two["service"] == pytest.approx(summary["scaling_efficiency"])


def test_reward_gpu_benchmark_prints_the_breakdown_on_cpu():
    summary = run_json("reward_gpu.py", "--device", "cpu", "--res", "64", "--batch", "2,4", "--repeats", "1")
    assert summary["graph"] and summary["host"]["per_sample_ms"] > 0 and summary["host"]["columns_ms"] > 0
    assert [r["batch"] for r in summary["rows"]] == [2, 4]
    for row in summary["rows"]:
        assert row["executor_per_s"] > 0 and row["executor_render_per_s"] > 0 and row["worker_per_s"] > 0
        assert row["worker_vs_executor"] == pytest.approx(row["worker_per_s"] / row["executor_per_s"])
        assert all(row[f"{k}_ms"] >= 0 for k in ("decode", "validate", "execute", "render", "cnn", "terms"))
        assert row["execute_ms"] > 0 and row["cnn_ms"] > 0


def test_reward_precision_benchmark_bounds_bf16_and_tf32():
    summary = run_json("reward_precision.py", "--quick", "--graphs", "2", "--samples", "3")
    assert summary["samples"] == 12
    assert 0 < summary["tf32"]["max_abs"] < summary["bfloat16"]["max_abs"] < 0.05
    assert summary["bfloat16"]["rank_correlation"] > 0.99
