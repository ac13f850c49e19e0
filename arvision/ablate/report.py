"""The report, rewritten as runs finish: results.csv, results.json, report.md, plots/, recipes/.

    REPORT/results.csv    one row per run (finished or not: see 'status')
    REPORT/results.json   {"ablation": ..., "runs": [rows], "variants": [...], "baselines": [...]}
    REPORT/report.md      per variant: mean [95% CI] over seeds, the best marked, the paired
                          difference to the reference; the baselines; the claims tested
                          (claims.py); the plots; every run
    REPORT/recipes/*.toml each run's resolved recipe (what ``arvision run`` would train)
    REPORT/plots/*.png    loss curves, accuracy bars, accuracy against compute
"""

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console
from rich.table import Table

from .files import write_json, write_text
from .plan import Plan
from .plots import write_plots
from .progress import duration
from .results import HIGHER, Tables, collect

__all__ = ["print_summary", "write_report"]


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".strip()


def _csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _best(tables: Tables) -> dict[str, set[str]]:
    """metric -> labels of the variants with the best mean (highest top-1, lowest loss; ties
    all marked)."""
    best = {}
    for name in tables.metrics:
        means = {agg["label"]: agg["metrics"][name].mean for agg in tables.aggregates
                 if agg["metrics"].get(name) is not None}
        if means:
            top = (max if name.endswith(HIGHER) else min)(means.values())
            best[name] = {label for label, mean in means.items() if mean == top}
    return best


def _delta(name: str) -> bool:
    """Whether the report shows a difference column for this metric."""
    return name.endswith(HIGHER) or name == "final_loss"


def _variant_table(tables: Tables) -> list[str]:
    names, best = tables.metrics, _best(tables)
    reference = tables.plan.ablation.reference
    head = ["variant", "seeds"] + [col for name in names
                                   for col in ((name, f"Δ {name}") if _delta(name) else (name,))] + \
        ["params", "FLOPs/img (train)", "train compute", "train time", "img/s", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for agg in tables.aggregates:
        cells = [agg["label"] + (" (reference)" if agg["label"] == reference else ""),
                 str(agg["seeds"])]
        for name in names:
            value = agg["metrics"].get(name)
            shown = value.show(2 if name.endswith(HIGHER) else 4) if value else "-"
            cells.append(f"**{shown}**" if agg["label"] in best.get(name, ()) else shown)
            if _delta(name):
                delta = agg["delta"].get(name)
                cells.append(delta.show(2 if name.endswith(HIGHER) else 4) if delta else "-")
        wall = agg["train_s"]
        cells += [_si(agg["params"]), _si(agg["flops_per_image"]), _si(agg["train_flops"]),
                  duration(wall.mean) if wall else "-",
                  f"{agg['images_per_s'].mean:.0f}" if agg["images_per_s"] else "-",
                  _si(agg["peak_rss_mib"].mean * 2**20, "B") if agg["peak_rss_mib"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for row in tables.baselines:
        cells = [row["label"], "-"] + [c for name in names for c in
                                       (f"{row[name]:.2f}" if row.get(name) is not None else "-",
                                        "")[:2 if _delta(name) else 1]]
        lines.append("| " + " | ".join(cells + ["-"] * 6) + " |")
    return lines


def _runs_table(tables: Tables, report_dir: Path) -> list[str]:
    accuracies = [name for name in tables.metrics if name.endswith(HIGHER)]
    head = ["run", "seed", "status", *accuracies, "final loss", "wall", "commit", "recipe",
            "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, row in zip(tables.plan.runs, tables.rows, strict=True):
        inside = report_dir.resolve() in run.directory.resolve().parents  # else not published
        result = os.path.relpath(run.directory / "result.json", report_dir)
        status = row["status"] + (" (reused)" if row.get("reused_from") else "")
        cells = [run.label, str(run.seed), status,
                 *(f"{row[name]:.2f}" if row.get(name) is not None else "-" for name in accuracies),
                 f"{row['final_loss']:.4f}" if row.get("final_loss") is not None else "-",
                 duration(row.get("wall_s")) if row.get("wall_s") else "-",
                 f"`{row['git'][:12]}`" if row.get("git") else "-",
                 f"[{run.name}.toml](recipes/{run.name}.toml)",
                 f"[result.json]({result})" if row["status"] == "finished" and inside else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _few_seeds(seeds: int) -> str:
    """The caveat of a bootstrap over few seeds: its interval cannot be wider than their range."""
    if seeds >= 5:
        return ""
    return (f" (with {seeds} seeds the interval cannot be wider than the seeds' range: read it as "
            "their spread, not as a calibrated 95% interval)")


def _protocol(plan: Plan) -> str:
    p = plan.protocol
    if plan.ablation.kind == "finetune":
        return ("each run fine-tunes the encoder as a classifier (its recipe's [finetune] table) "
                "and scores the final weights on data.eval_split (finetune_top1; "
                "finetune.eval_limit images, default all). No probes, no baselines.")
    blocks = ", ".join(map(str, p["blocks"])) if p["blocks"] else "the middle block"
    swept = [f"linear lr {p['linear_lrs']} x weight decay {p['linear_weight_decays']}"]
    if "knn" in p["probes"]:
        swept.append(f"k-NN k {p['knn_ks']}")
    if "attentive" in p["probes"]:
        swept.append(f"attentive lr {p['attentive_lrs']}")
    return (f"probes {', '.join(p['probes'])} on {blocks}; {p['limit'] or 'all'} train / "
            f"{p['eval_limit'] or 'all'} eval images; {', '.join(swept)} chosen on a seeded "
            f"{p['heldout']:.0%} held-out part of the train split, never on the eval split.")


def _claims_section(claims: list[dict[str, Any]]) -> list[str]:
    """The claims tested, one row per claim and metric (none: no section)."""
    if not claims:
        return []
    lines = ["## Claims", "",
             "Each claim's difference better - worse, paired by seed, with its 95% bootstrap "
             "interval; held: above 0, reversed: below 0, not separated: the interval contains 0.",
             "", "| claim | better | worse | metric | difference | verdict |",
             "|---|---|---|---|---|---|"]
    for row in claims:
        source = f" ({row['source']})" if row["source"] else ""
        lines.append(f"| {row['claim']}{source} | {row['better']} | {row['worse']} | "
                     f"{row['metric']} | {row['shown']} | {row['verdict']} |")
    return [*lines, ""]


def _markdown(tables: Tables, info: dict[str, Any], report_dir: Path) -> str:
    plan, rows = tables.plan, tables.rows
    done = sum(row["status"] == "finished" for row in rows)
    failed = sum(row["status"] == "failed" for row in rows)
    machine = info.get("machine", {})
    lines = [
        f"# Ablation: {plan.ablation.path.name}", "",
        f"{done} of {len(rows)} runs finished, {failed} failed (updated "
        f"{time.strftime('%Y-%m-%d %H:%M')}).", "",
        f"- command: `{info.get('command', '?')}`",
        f"- code: git `{info.get('git', '?')}`",
        f"- machine: {machine.get('summary', '?')}",
        f"- base recipe: `{plan.ablation.config.base}`; seeds {list(plan.ablation.config.seeds)};"
        f" {plan.threads} CPU thread(s) per run",
        f"- protocol: {_protocol(plan)}", "",
        "## Variants", "",
        "Mean over seeds with a 95% bootstrap interval [low, high]"
        f"{_few_seeds(len(plan.ablation.config.seeds))}; **bold**: the best mean of each column. "
        f"Δ: difference to `{plan.ablation.reference}`, paired by seed. Losses of "
        "different objectives (targets, decoders) are not comparable. Train time: steps x median "
        "step time. The hyperparameters each probe chose are in results.csv (linear_lr, "
        "linear_weight_decay, knn_k).", "",
        *_variant_table(tables), "",
        *_claims_section(tables.claims),
        "## Plots", "",
        "![loss curves](plots/loss.png)", "", "![probe accuracy](plots/accuracy.png)", "",
        "![accuracy against compute](plots/compute.png)", "",
        "## Runs", "",
        "Each run's resolved recipe is under `recipes/`; `arvision run recipes/RUN.toml` trains "
        "it again (with the same thread count for the same numbers).", "",
        *_runs_table(tables, report_dir), "",
    ]
    return "\n".join(lines)


def write_recipes(plan: Plan, folder: Path) -> None:
    """Each run's resolved recipe as ``folder/RUN.toml``; recipe files of runs the plan no longer
    has (a changed ablation file renames its runs) are removed, so the folder lists the report's
    runs only."""
    names = {f"{run.name}.toml" for run in plan.runs}
    for run in plan.runs:
        write_text(folder / f"{run.name}.toml", tomli_w.dumps(run.record))
    for path in folder.glob("*.toml"):
        if path.name not in names:
            path.unlink()


def write_report(plan: Plan, report_dir: Path, info: dict[str, Any],
                 failed: set[str] = frozenset()) -> Tables:
    """(Re)write every report file from the run directories; returns what it read."""
    tables = collect(plan, failed)
    write_recipes(plan, report_dir / "recipes")
    variants = [{**agg, "metrics": {k: v and v.as_dict() for k, v in agg["metrics"].items()},
                 "delta": {k: v and v.as_dict() for k, v in agg["delta"].items()},
                 **{key: agg[key] and agg[key].as_dict()
                    for key in ("train_s", "wall_s", "images_per_s", "peak_rss_mib")}}
                for agg in tables.aggregates]
    write_text(report_dir / "results.csv", _csv(tables.rows))
    write_json(report_dir / "results.json", {"ablation": info, "protocol": plan.protocol,
                                             "reference": plan.ablation.reference,
                                             "runs": tables.rows, "variants": variants,
                                             "baselines": tables.baselines,
                                             "claims": tables.claims})
    write_plots(tables, report_dir / "plots")
    write_text(report_dir / "report.md", _markdown(tables, info, report_dir))
    return tables


def print_summary(tables: Tables, console: Console) -> None:
    """The variants table on the terminal (mean [95% CI] over seeds)."""
    table = Table("variant", "seeds", *tables.metrics, title="ablation", title_justify="left")
    for agg in tables.aggregates:
        table.add_row(agg["label"], str(agg["seeds"]),
                      *(agg["metrics"][n].show(2 if n.endswith(HIGHER) else 4)
                        if agg["metrics"].get(n) else "-" for n in tables.metrics))
    for row in tables.baselines:
        table.add_row(row["label"], "-", *(f"{row[n]:.2f}" if row.get(n) is not None else "-"
                                           for n in tables.metrics))
    console.print(table)
    if tables.claims:
        table = Table("claim", "better - worse", "metric", "difference", "verdict",
                      title="claims", title_justify="left")
        for row in tables.claims:
            table.add_row(row["claim"], f"{row['better']} - {row['worse']}", row["metric"],
                          row["shown"], row["verdict"])
        console.print(table)
