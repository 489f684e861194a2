"""`matrl demo`: the whole system, small, on a local Ray, ending in an HTML report that shows RL at work.

1. `matrl train --config tiny` (`matrl.jobs.train`): renders a synthetic dataset of a few library
   structures, pre-trains the tiny policy on it, starts the reward service (Ray reward workers behind
   gRPC on 127.0.0.1), the replay buffer, a rollout worker and the learner, and runs PPO iterations,
   validating greedily on held-out targets (parameter draws never trained on).
2. Evaluation: the pre-trained and the fine-tuned policy predict every held-out target greedily;
   the predictions are executed, rendered and scored against the target.
3. One real photo from `../shared/real_photos` when present: its structure retrieved from the
   library (k = 1), predicted by both policies.
4. `OUT/report.html` (reward curves, before/after grids, numbers) and `OUT/summary.json`
   `{"reward_before", "reward_after", "wall_s", ...}`; the rewards are the job's own validation
   (mean greedy reward on the held-out targets, through the reward service) before RL and after
   its last iteration.

Defaults fit 10 minutes on two CPU cores with no network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from matrl.config import load_config

SHARED_PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "real_photos"


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Path("runs/demo")
    preset: str = Field("tiny", description="train preset the demo runs")
    iterations: int | None = Field(8, ge=1, description="PPO iterations of 256 trajectories (None: the "
                                                        "preset's 20); 8 keep the demo near 6 minutes on 2 cores")
    examples: int = Field(8, ge=1, le=32, description="held-out targets shown before/after")
    photos: Path | None = Field(None, description="photo directory (default ../shared/real_photos when present)")
    num_cpus: int = Field(2, ge=1, description="CPUs of the local Ray (bound to 127.0.0.1)")
    seed: int = Field(0, ge=0)


def _predict(checkpoint: Path, targets, structures, res: int, seed: int = 0):
    """Greedy prediction of a checkpoint for each target (with the given structure): the rendered
    image (H, W, 3 uint8) and its reward, scored in this process."""
    from graph_executor.executor import Plan
    from graph_executor.ir import loads_graph
    from graph_executor.render import render_flash
    from policy.batching import collate
    from policy.checkpoint import load_policy
    from policy.encoders import EncoderConfig
    from policy.sampler import Sampler, SamplingConfig
    from policy.tokenizer import GraphTokenizer, Vocabulary
    from reward_service.api import ScoreRequest
    from reward_service.config import RewardConfig
    from reward_service.worker import RewardWorker

    policy, info = load_policy(checkpoint)
    encoder = EncoderConfig.model_validate(info.encoder).build()
    vocab = Vocabulary.from_dict(info.policy.vocab)
    scorer = RewardWorker(RewardConfig(res=res))
    out = []
    with torch.no_grad():
        for i, (target, structure) in enumerate(zip(targets, structures)):
            graph = loads_graph(structure.graph_json)
            tokenizer = GraphTokenizer(graph, vocab)
            image = torch.from_numpy(target.image).permute(2, 0, 1)[None].float() / 255
            tokens = Sampler(policy, SamplingConfig(greedy=True)).sample(
                collate([tokenizer.structure()]), encoder(image).tokens, seed=seed).tokens[0]
            params = tokenizer.detokenize(tokens[:len(tokenizer)])
            plan = Plan(graph)
            render = render_flash(plan.run(plan.stack([params]), res=res, seed=seed + i))[0]
            reward = scorer.score(ScoreRequest(structure=structure.reward_structure, seeds=[seed + i],
                                               target=target.png(), param_sets=[params]))[0].reward
            out.append(((render.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), reward))
    return out


def run_demo(config: DemoConfig) -> Path:
    """Run every stage; returns the path of the HTML report."""
    import ray

    from matrl.jobs.ray_runtime import init_ray
    from matrl.jobs.train import TrainJob, TrainJobConfig
    from matrl.reports.curves import plot_run
    from matrl.reports.html import HtmlReport, ImageCell
    from rollout_workers.targets import PhotoTargets, build_targets

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"seed": config.seed, "num_cpus": config.num_cpus}
    if config.iterations is not None:
        overrides["iterations"] = config.iterations
    train_config = load_config(TrainJobConfig, "train", config.preset, overrides)
    info = init_ray(num_cpus=config.num_cpus, log_to_driver=False)
    print(f"[demo 1/3] matrl train --config {config.preset}: pre-training, then {train_config.iterations} PPO "
          f"iterations of {train_config.trajectories_per_iteration} trajectories", flush=True)
    job = TrainJob(train_config, out / "train", resume=(out / "train" / "checkpoints" / "latest").is_dir(),
                   progress=False, fixed_cluster=info["started"], job_name="matrl-demo")
    try:
        summary = job.run()
    finally:
        job.close()
        if info["started"]:
            ray.shutdown()

    print("[demo 2/3] before/after predictions on held-out targets", flush=True)
    from policy.checkpoint import latest_checkpoint

    before_ck = (latest_checkpoint(out / "train" / "pretrain" / "run" / "checkpoints")
                 if train_config.init.startswith("pretrain:") else Path(train_config.init))
    after_ck = out / "train" / "checkpoints" / "latest"
    targets = build_targets(train_config.validation_targets()).fixed(config.examples)
    structures = [t.structures[0] for t in targets]
    res = train_config.reward.config.res
    before = _predict(before_ck, targets, structures, res)
    after = _predict(after_ck, targets, structures, res)

    photos_dir = config.photos or (SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else None)
    photo_rows = []
    if photos_dir is not None and Path(photos_dir).is_dir():
        print("[demo 3/3] a real photo, structure retrieved from the library", flush=True)
        from policy.retrieval import default_index

        paths = PhotoTargets.find(photos_dir)
        if paths:
            photo = PhotoTargets([paths[len(paths) // 2]], default_index(), k=1, res=256).targets[0]
            photo_rows = [(photo, _predict(before_ck, [photo], photo.structures, 256)[0],
                           _predict(after_ck, [photo], photo.structures, 256)[0])]

    history = summary["val_history"]
    reward_before, reward_after = history[0][1], history[-1][1]
    sampled = summary.get("val_sample_history") or []
    sample_before, sample_after = (sampled[0][1], sampled[-1][1]) if sampled else (None, None)
    wall = time.perf_counter() - started
    curves = plot_run(out / "train", out / "curves.png", title="matrl demo: PPO on the tiny preset")

    page = HtmlReport("matrl demo: a policy fine-tuned by RL")
    page.paragraph(f"{summary['iterations']} PPO iterations, {summary['trajectories']} trajectories "
                   f"({summary['trajectories_per_s']:.1f}/s) on {train_config.targets.synthetic.graphs} at "
                   f"{res}², {wall:.0f} s in all (pre-training included).")
    page.heading("Greedy reward on held-out targets")
    page.table(["policy", "mean reward (validation, reward service)"],
               [["pre-trained", reward_before], ["after RL", reward_after],
                ["best during RL", summary["val_reward_best"]]])
    if sampled:
        page.heading("Expected reward of the policy's samples on the same targets")
        page.table(["policy", f"mean reward of {train_config.validation.samples} top-p samples per target",
                    f"mean top-1 of {train_config.validation.samples}"],
                   [["pre-trained", sampled[0][1], sampled[0][2]], ["after RL", sampled[-1][1], sampled[-1][2]]])
    page.image(curves, caption="training reward, validation reward and policy drift per iteration")
    page.heading("Before and after, held-out targets")
    page.paragraph("Each row: the target (a parameter draw never trained on), the pre-trained policy's greedy "
                   "prediction and the fine-tuned policy's, rendered, with their rewards.", note=True)
    rows = [[ImageCell(t.image, f"{s.structure_id}"), ImageCell(b[0], f"before {b[1]:+.3f}"),
             ImageCell(a[0], f"after {a[1]:+.3f}")] for t, s, b, a in zip(targets, structures, before, after)]
    page.grid(rows, header=["target", "pre-trained", "after RL"])
    if photo_rows:
        page.heading("A real photo")
        photo, b, a = photo_rows[0]
        page.paragraph(f"{photo.target_id}: structure {photo.structures[0].structure_id} retrieved from the library "
                       "(the tiny policy was trained on four structures: this row shows the path, not quality).",
                       note=True)
        page.grid([[ImageCell(photo.image, "photo"), ImageCell(b[0], f"before {b[1]:+.3f}"),
                    ImageCell(a[0], f"after {a[1]:+.3f}")]], header=["photo", "pre-trained", "after RL"])
    report = page.write(out / "report.html")
    result = {"reward_before": reward_before, "reward_after": reward_after, "wall_s": wall,
              "sample_reward_before": sample_before, "sample_reward_after": sample_after,
              "val_reward_best": summary["val_reward_best"], "iterations": summary["iterations"],
              "trajectories": summary["trajectories"], "trajectories_per_s": summary["trajectories_per_s"],
              "examples_before": float(np.mean([b[1] for b in before])),
              "examples_after": float(np.mean([a[1] for a in after])), "report": str(report)}
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    print(f"reward before RL {reward_before:+.4f} -> after {reward_after:+.4f}  ({wall:.0f} s)")
    print(f"report: {report.resolve()}")
    return report
