"""The embedded default job (`matrl demo`) runs end to end on a local Ray: pre-training, PPO through the
real actor-learner (reward service, rollout worker, buffer, learner), evaluation; its reward rises and
its HTML report loads in a real browser with every image."""

import json

import pytest
import ray

from matrl.cli import main
from matrl.reports.browser import check_images, find_chromium


def test_demo_runs_the_actor_learner_and_its_reward_rises(tmp_path):
    out = tmp_path / "demo"
    try:
        assert main(["demo", "--out", str(out), "--iterations", "4", "--examples", "4"]) == 0
    finally:
        ray.shutdown()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward_after"] > summary["reward_before"], summary
    assert summary["sample_reward_after"] > summary["sample_reward_before"], summary
    assert summary["iterations"] == 4 and summary["trajectories"] == 4 * 256
    train = json.loads((out / "train" / "summary.json").read_text())
    assert train["val_reward_pretrained"] == summary["reward_before"]
    assert (out / "train" / "checkpoints" / "latest" / "model.safetensors").is_file()
    report = (out / "report.html").read_text()
    assert "Greedy reward on held-out targets" in report
    assert report.count("data:image/png;base64,") >= 1 + 3 * 4
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (make test installs it)")
    page = check_images(out / "report.html")
    assert page.images >= 13 and page.broken == []
