"""Pre-training on online synthetic data: steps and rounds, checkpoints, a time-limited run resumes to
exactly the weights of an uninterrupted one, the CLI and Ray Train run it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from learner.pretrain import PretrainConfig
from learner.pretrain_online import OnlinePretrainer, RoundMetrics, make_trainer
from matrl.cli import main
from matrl.config import load_config
from policy.checkpoint import latest_checkpoint, load_policy

SMALL = {"train.steps": 4, "train.eval_every": 2, "train.batch_size": 8, "data.val_samples_per_structure": 4}


def online_config(out_dir, **overrides) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", "online_tiny", {"out_dir": str(out_dir), **SMALL, **overrides})


def test_online_run_validates_checkpoints_and_resumes_exactly(tmp_path):
    straight = make_trainer(online_config(tmp_path / "straight"))
    assert isinstance(straight, OnlinePretrainer)
    assert sum(b.size for b in straight.val_batches) == 4 * 4  # 2 library + 2 random held-out structures
    history = straight.fit()
    assert [m.step for m in history] == [2, 4]
    for m in history:
        assert math.isfinite(m.train_loss) and math.isfinite(m.val_loss) and 0 <= m.val_token_accuracy <= 1
        assert m.train_samples <= m.drawn_samples == 2 * 8 and 0 < m.data_fraction < 1
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [RoundMetrics.from_dict(r).step for r in rows] == [2, 4]
    assert latest_checkpoint(tmp_path / "straight" / "checkpoints").name == "step_00000004"

    # a time limit that has run out after the first step: checkpoint at step 1, then the same command resumes
    limited = make_trainer(online_config(tmp_path / "resumed", **{"train.time_limit_s": 1e-9}))
    assert [m.step for m in limited.fit()] == [1]
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_00000001"
    resumed = make_trainer(online_config(tmp_path / "resumed"))
    assert resumed.step == 1
    assert [m.step for m in resumed.fit()] == [2, 4]
    for name, tensor in straight.policy.state_dict().items():
        assert torch.equal(resumed.policy.state_dict()[name], tensor), name
    assert resumed.evaluate() == pytest.approx(straight.evaluate(), rel=1e-6)
    assert make_trainer(online_config(tmp_path / "resumed")).fit() == []

    policy, info = load_policy(tmp_path / "resumed" / "checkpoints" / "step_00000004")
    assert info.step == 4 and info.train["data"]["source"] == "online"


def fixed_retrieval(photo, k):
    """A stand-in for k-NN retrieval (another module's job): the same two library structures."""
    from graph_executor.library import load_library_graph

    return [load_library_graph("granite"), load_library_graph("red_bricks")][:k]


def test_real_photo_row_scores_greedy_authored_and_prior(tmp_path):
    """Mechanics of the real-photo evaluation on stand-in photos (renders saved as JPEG, plus one
    black capture that must be skipped); the real set lives in ../shared and is not copied."""
    from PIL import Image

    from graph_executor.executor import Plan
    from graph_executor.library import load_library_graph
    from graph_executor.render import render_flash
    from learner.dataset import image_to_uint8
    from learner.pretrain_eval import evaluate_real_photos

    for name in ("granite", "oak_planks"):
        plan = Plan(load_library_graph(name))
        (tmp_path / "photos" / name).mkdir(parents=True)
        image = image_to_uint8(render_flash(plan.run(plan.stack(batch=1), res=64))[0])
        Image.fromarray(image).save(tmp_path / "photos" / name / "0.jpg", quality=90)
    Image.new("RGB", (64, 64)).save(tmp_path / "photos" / "granite" / "1.jpg")
    trainer = make_trainer(online_config(tmp_path / "run", **{"train.steps": 1}))
    trainer.fit()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000001"
    report = evaluate_real_photos(checkpoint, tmp_path / "photos", fixed_retrieval, k=2, res=64)
    assert report.photos == 2 and set(report.by_material) == {"granite", "oak_planks"}
    for condition in ("greedy", "authored", "prior"):
        assert report.reward[condition].n == 2 and -1 <= report.reward[condition].mean <= 1, condition
    assert report.failures == {}
    from learner.pretrain_eval import main as eval_main

    assert eval_main(["--checkpoint", str(checkpoint), "--real-photos", str(tmp_path / "photos"), "--res", "64",
                      "--retrieval", "tests.test_online_pretrain:fixed_retrieval", "--k", "1",
                      "--max-photos", "1"]) == 0
    assert eval_main(["--checkpoint", str(checkpoint), "--real-photos", str(tmp_path / "photos"),
                      "--retrieval", "tests.nowhere:fn"]) == 2


def test_online_cli_runs_and_rejects_a_dataset_flag(tmp_path, capsys):
    args = ["pretrain", "--config", "online_tiny", "--out", str(tmp_path / "cli"), "--steps", "1",
            "--set", "train.batch_size=4", "--set", "data.val_samples_per_structure=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "step       1" in out and "samples/s" in out
    assert main(args + ["--data", str(tmp_path)]) == 2
    assert "--data names a stored dataset" in capsys.readouterr().err
    assert main(["pretrain", "--config", "online_tiny", "--set", "train.steps=null"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert main(["pretrain", "--config", "online_tiny", "--set", "data.held_out.library=[nowhere]"]) == 2
    assert "not in the library" in capsys.readouterr().err


@pytest.mark.slow
def test_online_ddp_on_two_ray_cpu_workers_draws_one_stream_per_rank(tmp_path):
    import ray

    from learner.pretrain_ray import pretrain_on_ray

    config = online_config(tmp_path / "ddp", **{"train.steps": 2, "distributed.num_workers": 2})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        history = pretrain_on_ray(config)
    finally:
        ray.shutdown()
    assert [m.step for m in history] == [2] and history[-1].drawn_samples == 2 * 2 * 8  # two ranks
    assert load_policy(tmp_path / "ddp" / "checkpoints" / "step_00000002")[1].step == 2
    assert (tmp_path / "ddp" / "ray" / "pretrain" / "step_00000002" / "model.safetensors").is_file()


@pytest.mark.gpu
def test_online_pretraining_on_cuda_compiled_bf16_learns(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = online_config(tmp_path / "cuda", **{
        "train.device": "cuda", "train.precision": "bf16", "data.compile": True, "train.steps": 60,
        "train.eval_every": 30, "train.batch_size": 64, "data.val_samples_per_structure": 16})
    trainer = make_trainer(config)
    initial, _ = trainer.evaluate()
    history = trainer.fit()
    assert history[-1].val_loss < 0.9 * initial
    assert load_policy(tmp_path / "cuda" / "checkpoints" / "step_00000060", device="cpu")[1].step == 60
