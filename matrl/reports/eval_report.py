"""The outputs of `matrl eval` (`matrl.infer.evaluate.EvalResult`) in one directory:

| file | what |
|---|---|
| `results.csv` | one row per target x model x budget x refine: reward, lpips, seconds, ... (`EvalRow.CSV_COLUMNS`) |
| `summary.md` | model, setting, n, reward mean [95 % CI], LPIPS mean [95 % CI], seconds per target; paired differences |
| `summary.json` | the same numbers, the config, the models, the machine, the skipped targets |
| `curve.png` | quality versus time (paper Fig. 11): mean seconds per target against mean top-1 reward |
| `report.html` | all of it in one self-contained page, with per-target grids (target | each model's top-1) |
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from matrl.infer.evaluate import EvalResult, EvalRow, PairedSummary, Summary, machine_text

SUMMARY_COLUMNS = ("model", "setting", "n", "reward mean [95% CI]", "LPIPS mean [95% CI]", "seconds per target")
PAIRED_COLUMNS = ("model", "baseline", "setting", "n", "Δ reward [95% CI]", "Δ LPIPS [95% CI]")
INTERVAL_NOTE = ("95 % confidence intervals of the mean are Student-t intervals over targets "
                 "(mean ± t(0.975, n−1)·s/√n); Δ = model − baseline on the same targets (paired).")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _seconds(s: Summary) -> str:
    return f"{s.seconds.mean:.3f}" if s.seconds.n else "–"


def summary_rows(result: EvalResult) -> list[list[str]]:
    return [[s.model, s.setting, str(s.reward.n), s.reward.format(), s.lpips.format(), _seconds(s)]
            for s in result.summaries()]


def paired_rows(result: EvalResult) -> list[list[str]]:
    return [[p.model, p.baseline, p.setting, str(p.reward.n), p.reward.format(), p.lpips.format()]
            for p in result.paired()]


def md_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(result: EvalResult) -> str:
    cfg = result.config
    lines = [f"# matrl eval: {'synthetic test split' if cfg.split == 'test' else 'real photos'}", "",
             f"{result.source}. Top-1 of each budget; reward = appearance reward (higher is better), "
             f"LPIPS = LPIPS-style distance `{result.lpips_name}` (lower is better); seconds = wall time of "
             "producing the top-1 per target.", "", *md_table(SUMMARY_COLUMNS, summary_rows(result))]
    paired = paired_rows(result)
    if paired:
        lines += ["", *md_table(PAIRED_COLUMNS, paired)]
    failures = {(s.model, s.setting): s.failures for s in result.summaries() if s.failures}
    if failures:
        lines += ["", "Top-1 failed (every candidate failed to execute; counted with the failure reward): "
                  + ", ".join(f"{m} {st}: {n}" for (m, st), n in failures.items())]
    if result.skipped:
        lines += ["", f"Skipped {len(result.skipped)} targets: " + "; ".join(result.skipped)]
    lines += ["", INTERVAL_NOTE, "",
              f"Models: " + "; ".join(f"{m.label} = `{m.checkpoint}`" for m in result.models) + ". "
              f"{len(result.targets)} targets, res {cfg.res}, seed {cfg.seed}, top-p {cfg.top_p}. "
              f"Machine: {machine_text(result.machine)}. Started {result.started}, {result.seconds:.0f} s in all."]
    return "\n".join(lines) + "\n"


def _model_order(result: EvalResult) -> dict[str, int]:
    return {m.label: i for i, m in enumerate(result.models)}


def sorted_rows(result: EvalResult) -> list[EvalRow]:
    order = _model_order(result)
    targets = {t.target_id: i for i, t in enumerate(result.targets)}
    return sorted(result.rows, key=lambda r: (targets[r.target], order[r.model], r.budget, r.refine_s))


def write_csv(result: EvalResult, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EvalRow.CSV_COLUMNS)
        for row in sorted_rows(result):
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row.csv_row()])
    return path


def summary_json(result: EvalResult) -> dict:
    def stat_entry(s: Summary | PairedSummary) -> dict:
        out = {"model": s.model, "budget": s.budget, "refine_s": s.refine_s, "setting": s.setting,
               "reward": s.reward.as_dict(), "lpips": s.lpips.as_dict()}
        if isinstance(s, Summary):
            out.update(seconds=s.seconds.as_dict(), failures=s.failures)
        else:
            out["baseline"] = s.baseline
        return out

    return _finite_or_none({
        "config": json.loads(result.config.model_dump_json()),
        "models": [{"label": m.label, "checkpoint": str(m.checkpoint)} for m in result.models],
        "source": result.source, "targets": [t.target_id for t in result.targets], "skipped": result.skipped,
        "lpips": result.lpips_name, "interval": "student-t 95% over targets",
        "summary": [stat_entry(s) for s in result.summaries()],
        "paired": [stat_entry(p) for p in result.paired()],
        "machine": result.machine, "started": result.started, "seconds": result.seconds})


def plot_curve(result: EvalResult, path: Path | None = None) -> bytes:
    """Quality versus time (paper Fig. 11): for each model (and refine setting) mean seconds per target
    against mean top-1 reward over the budgets, with the reward's 95 % interval; budgets written above
    the markers. Returns the PNG bytes (also written to `path` when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    summaries = result.summaries()
    for i, model in enumerate(result.models):
        for refine_s in result.config.refine_settings:
            line = sorted((s for s in summaries if s.model == model.label and s.refine_s == refine_s),
                          key=lambda s: s.budget)
            xs = [s.seconds.mean for s in line]
            ys = [s.reward.mean for s in line]
            err = [0.0 if math.isnan(s.reward.half_width) else s.reward.half_width for s in line]
            label = model.label + (f" + refine {refine_s:g} s" if refine_s > 0 else "")
            ax.errorbar(xs, ys, yerr=err, marker="o", color=f"C{i}", ls="--" if refine_s > 0 else "-",
                        capsize=3, label=label)
            for s, x, y in zip(line, xs, ys):
                ax.annotate(str(s.budget), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per target (producing the top-1)")
    ax.set_ylabel("mean top-1 reward")
    what = "synthetic test targets" if result.config.split == "test" else "real photos"
    ax.set_title(f"quality vs time: {len(result.targets)} {what} (bars: 95% CI; numbers: samples)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def write_html(result: EvalResult, path: Path, curve_png: bytes) -> Path:
    from matrl.reports.html import HtmlReport, ImageCell

    cfg = result.config
    page = HtmlReport(f"matrl eval: {'synthetic test split' if cfg.split == 'test' else 'real photos'}")
    page.paragraph(f"{result.source}. Models: " + "; ".join(f"{m.label} = {m.checkpoint}" for m in result.models)
                   + f". Budgets (candidates per target): {', '.join(map(str, cfg.all_budgets))}"
                   + (f"; post-optimisation {cfg.refine_s:g} s" if cfg.refine_s > 0 else "")
                   + f". Resolution {cfg.res}, seed {cfg.seed}, top-p {cfg.top_p}.")
    page.paragraph(f"Machine: {machine_text(result.machine)}. Started {result.started}; {result.seconds:.0f} s in all.", note=True)
    page.heading("Top-1 quality and time")
    page.table(SUMMARY_COLUMNS, summary_rows(result))
    paired = paired_rows(result)
    if paired:
        page.heading("Paired differences (model − baseline, same targets)", level=3)
        page.table(PAIRED_COLUMNS, paired)
    page.paragraph(INTERVAL_NOTE + f" LPIPS = {result.lpips_name}: an LPIPS-style feature distance without "
                   "learned channel weights (reward_service.metrics).", note=True)
    page.heading("Quality versus time (paper Fig. 11)")
    page.image(curve_png, caption="mean top-1 reward against mean seconds per target; numbers: sampling budgets")
    if result.skipped:
        page.paragraph(f"Skipped {len(result.skipped)} targets: " + "; ".join(result.skipped), note=True)

    page.heading("Per target: the target and each model's top-1")
    settings = result.settings()
    header = ["target"] + [f"{m.label}: {b}" + (f" + refine {r:g} s" if r > 0 else "")
                           for m in result.models for b, r in settings]
    by_key = {(r.target, r.model, r.budget, r.refine_s): r for r in result.rows}
    px = cfg.grid_px
    blank = np.full((px, px, 3), 200, np.uint8)
    grid = []
    for target in result.targets:
        from PIL import Image

        thumb = np.asarray(Image.fromarray(target.image).resize((px, px), Image.Resampling.BOX))
        cells = [ImageCell(thumb, target.target_id, px)]
        for m in result.models:
            for b, r in settings:
                row = by_key.get((target.target_id, m.label, b, r))
                if row is None or row.image is None:
                    cells.append(ImageCell(blank, "failed", px))
                else:
                    cells.append(ImageCell(row.image, f"{row.reward:.3f} · {row.lpips:.3f} · {row.best_structure}", px))
        grid.append(cells)
    page.paragraph("Captions: reward · LPIPS-style distance · structure of the top-1.", note=True)
    page.grid(grid, header=header)
    return page.write(path)


def write_all(result: EvalResult, out: str | Path) -> dict[str, Path]:
    """Every output under `out`; returns them by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": write_csv(result, out / "results.csv")}
    files["markdown"] = out / "summary.md"
    files["markdown"].write_text(markdown(result))
    files["json"] = out / "summary.json"
    files["json"].write_text(json.dumps(summary_json(result), indent=1, allow_nan=False))
    files["curve"] = out / "curve.png"
    curve = plot_curve(result, files["curve"])
    files["html"] = write_html(result, out / "report.html", curve)
    return files
