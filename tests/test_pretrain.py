"""Supervised pre-training: a tiny CPU run learns, checkpoints round-trip, interrupted runs resume exactly."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from policy.checkpoint import (CheckpointError, latest_checkpoint, load_policy, load_trainer_state,
                                read_checkpoint_info, save_checkpoint)
from learner.datagen import GenDataConfig, collect_graphs, generate
from learner.pretrain import Pretrainer, PretrainConfig, WorkerContext, warmup_cosine
from matrl.cli import main
from matrl.config import load_config
from policy.batching import collate
from policy.model import MaterialPolicy, PolicyConfig
from policy.tokenizer import GraphTokenizer, Vocabulary
from tests.test_dataset import SPECS, write_graphs

# Nine graphs, eight structures: 16 samples each at 64², so 96 training and 32 validation samples.
GRAPHS = SPECS + [("c0", 2, True, 4), ("c1", 3, True, 6), ("c2", 3, False, 5)]
# The tiny run below measured a 31% drop of the validation loss (4.49 -> 3.10, seeds 0 and 1).
REQUIRED_RELATIVE_DROP = 0.20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    folder = write_graphs(root / "graphs", GRAPHS)
    generate(GenDataConfig(out=root / "ds", per_graph=16, shard_size=16, res=64), collect_graphs(str(folder)),
             use_ray=False, progress=False)
    return root / "ds"


def tiny_config(dataset, out_dir, **overrides) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", "tiny", {"data.root": str(dataset), "out_dir": str(out_dir),
                                                            **overrides})


def test_tiny_cpu_pretraining_lowers_validation_loss(dataset, tmp_path):
    trainer = Pretrainer(tiny_config(dataset, tmp_path / "run", **{"train.epochs": 12}))
    assert len(trainer.train_set) == 96 and len(trainer.val_set) == 32
    initial_loss, initial_accuracy = trainer.evaluate()
    history = trainer.fit()
    assert [m.epoch for m in history] == list(range(1, 13))
    final = history[-1]
    assert final.val_loss <= (1 - REQUIRED_RELATIVE_DROP) * initial_loss, (initial_loss, final.val_loss)
    assert final.val_token_accuracy > initial_accuracy + 0.1
    assert final.train_loss < history[0].train_loss

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    val = events.Scalars("val/loss")
    assert [e.step for e in val] == list(range(0, 13))
    assert val[0].value == pytest.approx(initial_loss, rel=1e-5)
    assert {"train/loss", "train/lr", "train/grad_norm", "val/token_accuracy"} <= set(events.Tags()["scalars"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 13))
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "epoch_0012"


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.55) and factor(100) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


def test_checkpoint_round_trip(dataset, tmp_path):
    vocab = Vocabulary.from_registry()
    config = PolicyConfig(vocab=vocab.to_dict(), image_token_dim=16, image_tokens=4, node_dim=16, node_layers=1,
                          node_heads=2, dim=32, layers=1, heads=2)
    torch.manual_seed(3)
    policy = MaterialPolicy(config)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    tokenizer = GraphTokenizer(next(iter(collect_graphs(str(dataset / "graphs")).values()))[0], vocab)
    batch = collate([tokenizer.structure()] * 2, [tokenizer.tokenize()] * 2)
    images = torch.randn(2, 4, 16)
    policy(batch, images).logsumexp(-1).mean().backward()
    optimizer.step()

    path = save_checkpoint(tmp_path / "checkpoints" / "epoch_0007", policy, encoder={"name": "test"},
                           train={"note": "round trip"}, epoch=7, step=70, metrics={"val_loss": 1.5},
                           trainer_state={"optimizer": optimizer.state_dict()})
    loaded, info = load_policy(path)
    for name, tensor in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(batch, images), policy(batch, images))
    assert (info.epoch, info.step, info.metrics, info.encoder) == (7, 70, {"val_loss": 1.5}, {"name": "test"})
    assert info.policy == config
    restored = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(load_trainer_state(path)["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    (tmp_path / "checkpoints" / ".epoch_0009.tmp-123").mkdir()
    (tmp_path / "checkpoints" / "epoch_0008").mkdir()  # incomplete: no config.json
    assert latest_checkpoint(tmp_path / "checkpoints") == path

    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_policy(tmp_path / "checkpoints" / "epoch_0008")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    data = json.loads((broken / "config.json").read_text())
    data["policy"]["dim"] = 64
    (broken / "config.json").write_text(json.dumps(data))
    with pytest.raises((CheckpointError, RuntimeError)):
        load_policy(broken)
    data["format"] = "something/else"
    (broken / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="format"):
        read_checkpoint_info(broken)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(dataset, tmp_path):
    overrides = {"train.epochs": 3, "train.batch_size": 8, "data.max_train_samples": 32,
                 "data.max_val_samples": 8}
    straight = Pretrainer(tiny_config(dataset, tmp_path / "straight", **overrides))
    straight.fit()

    def stop_after_second_epoch(metrics, checkpoint):
        if metrics["epoch"] == 2:
            raise Interrupted

    config = tiny_config(dataset, tmp_path / "resumed", **overrides)
    with pytest.raises(Interrupted):
        Pretrainer(config, WorkerContext(report=stop_after_second_epoch)).fit()
    resumed = Pretrainer(config)
    assert resumed.start_epoch == 3 and resumed.step == 8
    history = resumed.fit()
    assert [m.epoch for m in history] == [3]
    for name, tensor in straight.policy.state_dict().items():
        assert torch.equal(resumed.policy.state_dict()[name], tensor), name
    assert Pretrainer(config).fit() == []


def test_bad_pretrain_requests_name_the_culprit(dataset, tmp_path, capsys):
    assert main(["pretrain", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "not a dataset directory" in capsys.readouterr().err
    assert main(["pretrain", "--config", "tiny", "--data", str(dataset), "--set", "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="train.epoch: unknown key"):
        tiny_config(dataset, tmp_path, **{"train.epoch": 3})
    assert main(["pretrain", "--config", "nonexistent-preset"]) == 2
    assert "neither a file nor a bundled pretrain preset (default, online, online_tiny, tiny)" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_train_ddp_on_two_cpu_workers(dataset, tmp_path):
    import ray

    from learner.pretrain_ray import pretrain_on_ray

    config = tiny_config(dataset, tmp_path / "ddp", **{"train.epochs": 2, "train.batch_size": 8,
                                                       "data.max_train_samples": 32, "data.max_val_samples": 8,
                                                       "distributed.num_workers": 2})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        history = pretrain_on_ray(config)
    finally:
        ray.shutdown()
    assert [m.epoch for m in history] == [1, 2] and history[-1].step == 4  # 32 samples / 2 ranks / batch 8
    policy, info = load_policy(tmp_path / "ddp" / "checkpoints" / "epoch_0002")
    assert info.epoch == 2 and info.metrics["val_loss"] == pytest.approx(history[-1].val_loss)
    assert (tmp_path / "ddp" / "ray" / "pretrain" / "epoch_0002" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def tiny_checkpoint(dataset, tmp_path_factory):
    """One epoch on 32 samples: (checkpoint, its last epoch's metrics)."""
    out = tmp_path_factory.mktemp("quality")
    trainer = Pretrainer(tiny_config(dataset, out / "run", **{"train.epochs": 1, "data.max_train_samples": 32}))
    trained = trainer.fit()[-1]
    return out / "run" / "checkpoints" / "epoch_0001", trained


def test_quality_report_matches_the_trainer_and_scores_every_condition(dataset, tiny_checkpoint):
    from learner.pretrain_eval import CONDITIONS, evaluate_checkpoint, format_report

    checkpoint, trained = tiny_checkpoint
    report = evaluate_checkpoint(checkpoint, dataset, split="val")
    assert report.samples == 32 and report.graphs == 2 and report.structures == 1
    assert report.teacher_forced_loss == pytest.approx(trained.val_loss, rel=1e-3)
    assert report.teacher_forced_token_accuracy == pytest.approx(trained.val_token_accuracy, abs=1e-3)
    assert 0 <= report.greedy_token_accuracy <= 1
    assert CONDITIONS == ("greedy", "top1_of_5", "prior", "uniform", "truth")
    for condition in CONDITIONS:
        stat = report.reward[condition]
        assert stat.n == 32 and -1 <= stat.mean <= 1, condition
        assert report.lpips[condition].n == 32 and report.lpips[condition].mean > 0, condition
    assert report.failures == {}
    text = format_report(report)
    assert "| truth |" in text and "| greedy − prior |" in text and "| top1_of_5 |" in text

    # per-target rows: every sample once; the best of 5 includes the greedy candidate
    assert sorted(r.index for r in report.targets) == list(range(32))
    assert all(r.reward["top1_of_5"] >= r.reward["greedy"] for r in report.targets)
    assert any(r.reward["top1_of_5"] > r.reward["greedy"] for r in report.targets)  # the draws are scored
    # paired differences: the statistics of the per-target differences, interval around the mean
    for (a, b), measure, paired in [(("greedy", "prior"), "reward", report.paired),
                                    (("greedy", "uniform"), "reward", report.paired),
                                    (("top1_of_5", "prior"), "reward", report.paired),
                                    (("greedy", "prior"), "lpips", report.paired_lpips)]:
        diffs = [getattr(r, measure)[a] - getattr(r, measure)[b] for r in report.targets]
        stat = paired[f"{a}_minus_{b}"]
        assert stat.n == 32 and stat.mean == pytest.approx(sum(diffs) / 32, abs=1e-12), (a, b, measure)
        lo, hi = stat.ci95
        assert lo < stat.mean < hi and hi - lo < max(diffs) - min(diffs), (a, b, measure)
        if measure == "reward":  # no failures: the mean difference is the difference of the means
            assert stat.mean == pytest.approx(report.reward[a].mean - report.reward[b].mean, abs=1e-9)

    # the distance is measured on the render the reward scored: re-render one target's truth here
    from graph_executor.executor import Plan
    from graph_executor.render import render_flash
    from learner.dataset import SyntheticDataset, decode_png, load_graphs
    from reward_service.metrics import AppearanceMetric

    row = report.targets[5]
    data = SyntheticDataset(dataset, "val")
    item = data[row.index]
    plan = Plan(load_graphs(dataset)[row.graph])
    with torch.no_grad():
        image = render_flash(plan.run(plan.stack([json.loads(item["params"])]), res=64,
                                      seed=(item["seed"] + 1) & 0x7FFFFFFF))
        target = torch.from_numpy(decode_png(data.table.column("image")[row.index].as_py()).copy())
        metric = AppearanceMetric()
        measured = metric.evaluate(image, target.permute(2, 0, 1)[None].float() / 255)
    assert float(measured["reward"][0]) == pytest.approx(row.reward["truth"], abs=1e-4)
    assert float(measured[report.lpips_name][0]) == pytest.approx(row.lpips["truth"], abs=1e-4)


def test_quality_report_json_carries_targets_and_paired_differences(dataset, tiny_checkpoint, tmp_path, capsys):
    from learner.pretrain_eval import CONDITIONS, main as eval_main

    out = tmp_path / "quality.json"
    assert eval_main(["--checkpoint", str(tiny_checkpoint[0]), "--data", str(dataset), "--split", "val",
                      "--max-per-graph", "3", "--per-target", "--json", str(out)]) == 0
    assert "| greedy − prior |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert {"reward", "lpips", "paired", "paired_lpips", "targets", "lpips_name"} <= set(report)
    assert set(report["paired"]) == {"greedy_minus_prior", "greedy_minus_uniform", "top1_of_5_minus_prior"}
    gp = report["paired"]["greedy_minus_prior"]
    assert gp["n"] == 6 and gp["ci95"][0] < gp["mean"] < gp["ci95"][1]
    assert len(report["targets"]) == 6
    for row in report["targets"]:
        assert set(row) == {"index", "graph", "reward", "lpips"} and set(row["reward"]) == set(CONDITIONS)
    diffs = [r["reward"]["greedy"] - r["reward"]["prior"] for r in report["targets"]]
    assert gp["mean"] == pytest.approx(sum(diffs) / 6)
    assert all(set(report[k][c]) == {"mean", "ci95", "stderr", "n"} for k in ("reward", "lpips") for c in CONDITIONS)
    assert eval_main(["--checkpoint", str(tiny_checkpoint[0]), "--data", str(dataset), "--split", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_streaming_ranks_stop_after_the_same_number_of_steps(dataset, tmp_path):
    from learner.dataset import StreamingSyntheticDataset

    for epoch in (1, 2):
        streams = [StreamingSyntheticDataset(dataset, "train", shuffle_buffer=8, rank=r, world_size=2)
                   for r in range(2)]
        for stream in streams:
            stream.set_epoch(epoch)
        rows = streams[0].rows_per_rank()
        assert rows == streams[1].rows_per_rank() and sum(rows) == 96
        assert [sum(1 for _ in stream) for stream in streams] == rows

    config = tiny_config(dataset, tmp_path / "stream", **{"data.streaming": True, "encoder.cache_tokens": False,
                                                          "train.epochs": 1, "data.max_val_samples": 8})
    trainer = Pretrainer(config)
    assert trainer.epoch_steps == {1: 6}  # 96 rows, batch 16
    history = trainer.fit()
    assert history[0].step == 6 and history[0].train_loss < 5
    with pytest.raises(ValueError, match="cache_tokens"):
        Pretrainer(tiny_config(dataset, tmp_path / "x", **{"data.streaming": True}))


@pytest.mark.gpu
def test_pretraining_on_cuda_learns_and_checkpoints_load_on_cpu(dataset, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    # 10 epochs, not the CPU test's 6: on an H200 6 epochs dropped the loss by 19.95% (nondeterministic
    # CUDA kernels), a hair short of the required 20%
    config = tiny_config(dataset, tmp_path / "cuda", **{"train.device": "cuda", "train.epochs": 10,
                                                        "encoder.cache_tokens": False})
    trainer = Pretrainer(config)
    initial_loss, _ = trainer.evaluate()
    history = trainer.fit()
    assert history[-1].val_loss <= (1 - REQUIRED_RELATIVE_DROP) * initial_loss
    policy, info = load_policy(tmp_path / "cuda" / "checkpoints" / "epoch_0010", device="cpu")
    assert info.epoch == 10 and next(policy.parameters()).device.type == "cpu"


@pytest.mark.gpu
def test_ray_train_ddp_over_every_gpu_with_nccl(dataset, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import ray

    from learner.pretrain_ray import pretrain_on_ray

    gpus = torch.cuda.device_count()
    config = tiny_config(dataset, tmp_path / "nccl", **{
        "train.epochs": 2, "train.batch_size": 8, "train.device": "cuda", "encoder.cache_tokens": False,
        "distributed.num_workers": gpus, "distributed.use_gpu": True, "distributed.backend": "nccl"})
    ray.init(num_cpus=2 * gpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:
        history = pretrain_on_ray(config)
    finally:
        ray.shutdown()
    assert [m.epoch for m in history] == [1, 2]
    per_rank = math.ceil(96 / gpus)  # DistributedSampler pads every rank to the same count
    assert history[-1].step == 2 * math.ceil(per_rank / 8)
    assert load_policy(tmp_path / "nccl" / "checkpoints" / "epoch_0002")[1].epoch == 2
