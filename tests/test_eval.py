"""`matrl eval`: two tiny checkpoints on rendered held-out targets; the CSV and Markdown tables have the stated
columns and finite numbers, the HTML report opens in headless Chromium with every image decoded; the budget is
spread over structures as documented; dataset rows (a generated, non-library structure) and real photos work;
the 95 % interval is Student's t; bad arguments fail with one line."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.stats import Stat
from matrl.cli import main
from matrl.infer.evaluate import EvalConfig, EvalRow, Evaluator, ModelSpec, load_targets
from matrl.infer.pipeline import InferConfig, MaterialInference, split_budget
from matrl.reports.browser import check_images, find_chromium
from matrl.reports.eval_report import PAIRED_COLUMNS, SUMMARY_COLUMNS
from policy.checkpoint import save_checkpoint
from policy.encoders import EncoderConfig
from tests.rl_helpers import tiny_policy

TARGETS, BUDGETS, REFINE = 3, (2, 4), 0.5
MODELS = ("A", "B")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ck")
    return {label: save_checkpoint(root / label, tiny_policy(seed), encoder=EncoderConfig().model_dump())
            for seed, label in enumerate(MODELS)}


@pytest.fixture(scope="module")
def eval_run(checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    rc = main(["eval", "--checkpoint", str(checkpoints["A"]), "--baseline", str(checkpoints["B"]), "--labels", "A,B",
               "--split", "test", "--graphs", "red_plastic,brushed_steel", "--targets", str(TARGETS),
               "--samples", "2", "--budgets", ",".join(map(str, BUDGETS)), "--refine", str(REFINE), "--res", "64",
               "--grid-px", "64", "--no-progress", "--out", str(out)])
    assert rc == 0
    return out


def _md_table(text: str, header: tuple[str, ...]) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index("| " + " | ".join(header) + " |")
    assert lines[start + 1] == "|" + " --- |" * len(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


INTERVAL = re.compile(r"^(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\]$")


def _interval(cell: str) -> tuple[float, float, float]:
    match = INTERVAL.match(cell)
    assert match, f"not 'mean [lo, hi]': {cell!r}"
    mean, lo, hi = (float(v) for v in match.groups())
    assert all(math.isfinite(v) for v in (mean, lo, hi)) and lo <= mean <= hi, cell
    return mean, lo, hi


def test_eval_tables_have_the_stated_columns_and_finite_numbers(eval_run):
    with open(eval_run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == EvalRow.CSV_COLUMNS
    settings = [(b, r) for b in sorted({2, *BUDGETS}) for r in (0.0, REFINE)]  # table budget 1 x 2 samples = 2
    assert len(rows) == TARGETS * len(MODELS) * len(settings)
    assert {(int(r["budget"]), float(r["refine_s"])) for r in rows} == set(settings)
    assert {r["model"] for r in rows} == set(MODELS) and len({r["target"] for r in rows}) == TARGETS
    for r in rows:
        for key in ("reward", "lpips", "seconds"):
            assert math.isfinite(float(r[key])), (key, r)
        assert float(r["seconds"]) > 0 and r["ok"] == "True" and r["structures"] == "1"
        assert r["best_structure"] in ("red_plastic", "brushed_steel") and r["best_kind"] in ("greedy", "sampled")
        assert r["target"].endswith("/" + r["best_structure"])  # the synthetic target's own structure was given
    by_key = {(r["target"], r["model"], r["budget"], float(r["refine_s"])): r for r in rows}
    for (target, model, budget, refine_s), r in by_key.items():
        if refine_s:  # the refined setting starts from the same top-1: never worse, and its time includes the run
            plain = by_key[(target, model, budget, 0.0)]
            assert float(r["reward"]) >= float(plain["reward"]) - 1e-4
            assert float(r["seconds"]) > float(plain["seconds"])

    md = (eval_run / "summary.md").read_text()
    table = _md_table(md, SUMMARY_COLUMNS)
    assert [(r[0], r[1]) for r in table] == [(m, f"{b} samples" + (f" + refine {r:g} s" if r else ""))
                                             for m in MODELS for r in (0.0, REFINE) for b in sorted({2, *BUDGETS})]
    for model, setting, n, reward, lpips, seconds in table:
        assert int(n) == TARGETS
        _interval(reward)
        assert _interval(lpips)[0] >= 0
        assert float(seconds) > 0
    mean_a2 = np.mean([float(r["reward"]) for r in rows if r["model"] == "A" and r["budget"] == "2" and r["refine_s"] == "0.0"])
    assert _interval(table[0][3])[0] == pytest.approx(mean_a2, abs=6e-4)  # the table is the mean of the CSV
    paired = _md_table(md, PAIRED_COLUMNS)
    assert len(paired) == len(settings) and all(r[:2] == ["A", "B"] for r in paired)
    for row in paired:
        _interval(row[4]), _interval(row[5])

    summary = json.loads((eval_run / "summary.json").read_text())
    assert summary["interval"].startswith("student-t") and len(summary["summary"]) == len(MODELS) * len(settings)
    assert all(math.isfinite(s["reward"]["mean"]) and s["reward"]["n"] == TARGETS for s in summary["summary"])
    assert (eval_run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (make test installs it)")
def test_eval_report_loads_in_chromium_with_no_broken_image(eval_run):
    text = (eval_run / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    page = check_images(eval_run / "report.html")
    settings = len(set([2, *BUDGETS])) * 2
    assert page.images == 1 + TARGETS * (1 + len(MODELS) * settings)  # curve + per target: target and every top-1
    assert page.broken == []


def test_match_spreads_the_budget_over_structures_greedy_first(checkpoints):
    assert split_budget(25, 5) == [5] * 5 and split_budget(150, 5) == [30] * 5
    assert split_budget(7, 3) == [3, 2, 2] and split_budget(2, 5) == [1, 1, 0, 0, 0]
    with pytest.raises(ValueError):
        split_budget(0, 5)
    engine = MaterialInference(checkpoints["A"], InferConfig(structures=3, res=64, out_res=64))
    from tests.test_infer import _render

    target = _render("red_bricks", res=64)
    result = engine.match(target, budget=7, floor=False)
    per_structure: dict[str, list[str]] = {}
    for c in result.candidates:
        per_structure.setdefault(c.structure_id, []).append(c.kind)
    assert sorted(len(k) for k in per_structure.values()) == [2, 2, 3]
    assert all(kinds.count("greedy") == 1 for kinds in per_structure.values())
    assert result.best_reward == max(c.reward for c in result.candidates)
    assert "retrieve" in result.timings_s and result.timings_s["total"] > 0 and math.isnan(result.random_floor_reward)
    # what eval measures is the render the ranking scored: the same reward
    image = torch.from_numpy(target.copy()).permute(2, 0, 1)[None].float() / 255
    metrics = engine.reward.metric.evaluate(engine.render_graph(result.best_graph), image)
    assert float(metrics["reward"][0]) == pytest.approx(result.best_reward, abs=1e-4)


def test_dataset_rows_with_a_generated_structure(checkpoints, tmp_path):
    """`--data`: the rows of a gen-data test split, whose structure (here a generated one, not in the
    library) is given to the pipeline as graph JSON; the resolution defaults to the dataset's."""
    from learner.datagen import GenDataConfig, generate, with_generated_graphs

    graphs = with_generated_graphs({}, 4, seed=3)
    generate(GenDataConfig(out=tmp_path / "ds", per_graph=2, shard_size=2, res=64), graphs, use_ray=False,
             progress=False)
    targets, skipped, source = load_targets(EvalConfig(data=tmp_path / "ds", targets=0, res=64))
    assert targets and not skipped and "test split" in source
    assert all(t.structures[0].structure_id.startswith("gen_") and not t.structures[0].library for t in targets)
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(checkpoints["A"]), "--data", str(tmp_path / "ds"), "--targets", "0",
                 "--samples", "2", "--no-progress", "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(targets)
    for row in rows:
        assert row["ok"] == "True" and row["best_structure"] == row["target"].rsplit("/", 1)[1]
        assert math.isfinite(float(row["reward"])) and math.isfinite(float(row["lpips"]))
    assert json.loads((out / "summary.json").read_text())["config"]["res"] == 64


def test_real_photos_with_retrieved_structures(checkpoints, real_photos_dir):
    config = EvalConfig(split="real", photos=Path(real_photos_dir), targets=2, structures=2, samples=1,
                        budgets=(3,), res=64)
    targets, skipped, source = load_targets(config)
    assert len(targets) == 2 and all(t.kind == "real" and t.structures is None for t in targets)
    result = Evaluator([ModelSpec("A", checkpoints["A"])], config).run(targets, progress=False)
    assert {(r.budget, r.structures) for r in result.rows} == {(2, 2), (3, 2)}  # spread over the 2 retrieved
    from graph_executor.library import library_names

    for row in result.rows:
        assert row.ok and row.best_structure in library_names()
        assert math.isfinite(row.reward) and math.isfinite(row.lpips) and row.seconds > 0
        assert row.reward == pytest.approx(row.ranking_reward, abs=1e-4)
    assert all(math.isfinite(s.reward.mean) for s in result.summaries())


def test_the_interval_is_students_t():
    values = [0.61, 0.55, 0.70, 0.58, 0.66]
    s = Stat.of(values)
    sd = np.std(values, ddof=1)
    lo, hi = s.ci95
    assert (hi - lo) / 2 == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert s.mean == pytest.approx(np.mean(values))
    assert math.isnan(Stat.of([0.5]).half_width) and Stat.of([0.5]).format() == "0.500"
    d = Stat.paired([1.0, 2.0, 3.0], [0.5, 1.0, 2.5])
    assert d.mean == pytest.approx(2 / 3) and d.n == 3
    with pytest.raises(ValueError):
        Stat.paired([1.0], [1.0, 2.0])


@pytest.mark.parametrize("argv, culprit", [
    (["--graphs", "red_plastic,no_such_graph"], "no_such_graph"),
    (["--split", "real"], "--photos"),
    (["--split", "real", "--photos", "/nonexistent"], "--photos /nonexistent"),
    (["--data", "/nonexistent", "--graphs", "red_plastic"], "--graphs"),
    (["--budgets", "0,5"], "budgets"),
    (["--budgets", "5,x"], "--budgets"),
    (["--res", "100"], "--res"),
    (["--baseline", "/nonexistent/ck"], "--baseline"),
    (["--labels", "A,B"], "--labels"),
    (["--device", "banana"], "--device"),
    (["--seed", "-1"], "--seed"),
    (["--targets", "-1"], "--targets"),
])
def test_bad_arguments_fail_with_one_line_naming_the_culprit(checkpoints, tmp_path, capsys, argv, culprit):
    try:
        rc = main(["eval", "--checkpoint", str(checkpoints["A"]), "--no-progress", "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit_:  # argparse's own errors (a malformed --budgets, a bad choice)
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert culprit in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
