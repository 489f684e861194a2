"""The embedded default job (`matrl demo`) runs end to end on a small in-process Ray."""

import re

import ray

from matrl.cli import main


def test_demo_runs_every_stage_and_reports_through_the_reward_service(tmp_path):
    out = tmp_path / "demo"
    try:
        assert main(["demo", "--out", str(out), "--per-graph", "8", "--epochs", "1", "--generated", "0",
                     "--reward-workers", "1"]) == 0
        assert ray.util.get_node_ip_address() == "127.0.0.1"  # its local Ray binds loopback (init_ray)
    finally:
        ray.shutdown()
    report = (out / "report.md").read_text()
    assert (out / "data" / "manifest.json").exists() or any((out / "data").iterdir())
    assert list((out / "pretrain" / "checkpoints").iterdir())
    epochs = re.findall(r"^\| 1 \| [0-9.]+ \| [0-9.]+ \|", report, flags=re.M)
    assert epochs, report
    rows = dict(re.findall(r"^\| (greedy|prior|uniform|truth) \| (-?[0-9.]+) \|", report, flags=re.M))
    assert set(rows) == {"greedy", "prior", "uniform", "truth"}
    assert float(rows["truth"]) > float(rows["uniform"])
    served = re.findall(r"^\| 0 \| (\d+) \| (\d+) \| (\d+) \|", report, flags=re.M)
    assert served and int(served[0][1]) > 0, "the reward service scored nothing"
