"""The run report: `python -m pipeline.report RUN_DIR [--published-as NAME]` → RUN_DIR/report/report.md, PNGs.

Everything comes from what the stages wrote (manifests, and the evaluations' scored.parquet for standard
errors), so the report can be rebuilt at any time, also for a run that is still going or stopped half-way:
stages without a manifest are simply absent. Contents:

- held-out accuracy (pass@1, maj@k, best-of-N, greedy) of every evaluated model, each ± one standard error,
  each round beside its compute-matched control, and the gains in pass@1 with the standard error of the
  difference;
- benchmarks (`eval_benchmarks`): pass@1 ± standard error of each benchmarked model, with the published
  numbers of the base model beside them when the run names it (`published_as`, pipeline/published.yaml);
- training curves: SFT loss per round (controls dashed), reward-model accuracy, GRPO reward;
- per round, as bars readable at one round and at many: rejection sampling's acceptance, pass@1 and
  truncation, completion lengths, reward-model held-out accuracy;
- data counts (decontamination included), wall time per step (pipeline.json) and each stage's config.

Standard errors are over prompts, the unit a rerun on other problems would change (a prompt's n samples
are not independent draws of the test set), with the sample standard deviation (ddof 1):

- pass@1: `pass@1_stderr` from the evaluation's metrics when it wrote one; else the standard deviation of
  the per-prompt pass rates in its scored.parquet over sqrt(prompts); else, with neither, the bound
  sqrt(p(1-p)/(prompts-1)) (the value when every prompt is always or never solved; larger otherwise). The
  report says which one each number is (`stderr_how` in summary.json).
- greedy accuracy and best-of-N: one 0/1 result per prompt, so sqrt(p(1-p)/(prompts-1)) is exact.
- maj@k: a share of votes per prompt, in [0, 1], so the same formula is an upper bound.
- a difference of two models' pass@1: paired over the prompts both scored.parquet files share (prompt
  difficulty cancels, so it is smaller than the two errors combined), else sqrt(se_a^2 + se_b^2).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.artifacts import read_manifest
from core.layout import RunLayout
from pipeline.config import PUBLISHED

ACCURACY_KEYS = ("pass@1", "greedy_accuracy", "best_of_n_rm")
BINARY_KEYS = ("greedy_accuracy", "best_of_n_rm")  # one 0/1 result per prompt
DPI = 110


# ------------------------------------------------------------------------------------------ standard errors


def binary_stderr(p: float, n: int) -> float | None:
    """Standard error of a mean of n values in [0, 1] with mean p: exact for 0/1 values, else a bound."""
    return math.sqrt(max(p * (1 - p), 0.0) / (n - 1)) if n > 1 else None


def sample_stderr(values: Sequence[float]) -> float | None:
    import numpy as np

    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def pass_rates(stage_dir: Path) -> Any:
    """Per-prompt share of correct samples (a pandas Series by prompt id) from an evaluation's
    scored.parquet, or None without one. A sample the verifier could not judge counts as wrong, as in
    reject_sampling.metrics."""
    path = stage_dir / "scored.parquet"
    if not path.is_file():
        return None
    import pandas as pd

    df = pd.read_parquet(path, columns=["id", "correct"])
    return df["correct"].fillna(False).astype(float).groupby(df["id"]).mean()


def with_stderr(metrics: dict[str, Any], rates: Any) -> dict[str, Any]:
    """The metrics plus `stderr` {metric: value} and `stderr_how` {metric: how it was obtained}."""
    n = int(metrics.get("prompts") or 0)
    se: dict[str, float | None] = {}
    how: dict[str, str] = {}
    if "pass@1" in metrics:
        if metrics.get("pass@1_stderr") is not None:
            se["pass@1"], how["pass@1"] = metrics["pass@1_stderr"], "metrics"
        elif rates is not None:
            se["pass@1"], how["pass@1"] = sample_stderr(rates.to_numpy()), "scored.parquet"
        else:
            se["pass@1"], how["pass@1"] = binary_stderr(metrics["pass@1"], n), "bound"
    for key in metrics:
        if key in BINARY_KEYS or key.startswith("maj@"):
            se[key] = binary_stderr(metrics[key], n)
            how[key] = "exact" if key in BINARY_KEYS else "bound"
    return {**metrics, "stderr": se, "stderr_how": how}


def difference(a: str, b: str, evals: dict[str, Any], rates: dict[str, Any]) -> dict[str, Any]:
    """pass@1 of `a` minus `b` with its standard error (see the module docstring)."""
    diff = evals[a]["pass@1"] - evals[b]["pass@1"]
    ra, rb = rates.get(a), rates.get(b)
    if ra is not None and rb is not None and (shared := ra.index.intersection(rb.index)).size > 1:
        paired = (ra[shared] - rb[shared]).to_numpy()
        return {
            "a": a,
            "b": b,
            "diff": diff,
            "stderr": sample_stderr(paired),
            "how": f"paired, {shared.size} prompts",
        }
    errors = [evals[x]["stderr"].get("pass@1") for x in (a, b)]
    se = math.sqrt(sum(e**2 for e in errors)) if None not in errors else None
    return {"a": a, "b": b, "diff": diff, "stderr": se, "how": "unpaired"}


# ------------------------------------------------------------------------------------------ collect


def _rounds(run_dir: Path) -> list[int]:
    found = [int(m.group(1)) for p in run_dir.glob("round_*") if (m := re.fullmatch(r"round_(\d+)", p.name))]
    return sorted(found)


def _metrics(stage_dir: Path) -> dict[str, Any] | None:
    manifest = read_manifest(stage_dir)
    return manifest.metrics if manifest else None


def published_numbers(name: str | None) -> dict[str, Any] | None:
    """The entry of pipeline/published.yaml the run names (`published_as`); {"name", "missing": true} for a
    name the table does not hold, None when the run names none."""
    if not name:
        return None
    from omegaconf import OmegaConf

    table = OmegaConf.to_container(OmegaConf.load(PUBLISHED))
    if name not in table:
        return {"name": name, "missing": True, "known": sorted(table)}
    return {"name": name, **table[name]}


def collect(run_dir: Path, published_as: str | None = None) -> dict[str, Any]:
    """Every metric the report shows, as plain data (also written to report/summary.json).

    With a pipeline.json, only the stages of its plan count (a step's name is its directory under the
    run): a directory an earlier plan of the same run left behind, e.g. round 2 of a rounds=3 attempt
    re-run with rounds=2, is not this run's and must not show up in its tables. `published_as` defaults to
    the one pipeline.json records."""
    timing = (
        json.loads((run_dir / "pipeline.json").read_text()) if (run_dir / "pipeline.json").exists() else None
    )
    planned = {s["name"] for s in timing["steps"]} if timing else None

    def metrics(rel: str) -> dict[str, Any] | None:
        return _metrics(run_dir / rel) if planned is None or rel in planned else None

    evals, rates = {}, {}
    for d in sorted((run_dir / "eval").glob("*")):
        if m := metrics(RunLayout.eval_step(d.name)):
            rates[d.name] = pass_rates(d)
            evals[d.name] = with_stderr(m, rates[d.name])
    benchmarks: dict[str, dict[str, Any]] = {}
    # In the plan's order (eval_benchmarks=[math500,aime24] reads left to right), else by name.
    bench_dirs = (
        [run_dir / s["name"] for s in timing["steps"] if s["name"].startswith("bench/")]
        if timing
        else sorted((run_dir / "bench").glob("*/*"))
    )
    for d in bench_dirs:
        if m := metrics(RunLayout.bench_step(d.parent.name, d.name)):
            benchmarks.setdefault(d.parent.name, {})[d.name] = with_stderr(m, pass_rates(d))
    rounds = {}
    for k in _rounds(run_dir):
        stages = ("sft", "sft_control", "reward_model", "reject_sampling", "grpo")
        found = {name: m for name in stages if (m := metrics(RunLayout.round_step(k, name))) is not None}
        if found:
            rounds[k] = found
    if published_as is None and timing:
        published_as = timing.get("published_as")
    return {
        "data": _metrics(run_dir / "data"),
        "rounds": rounds,
        "grpo": next((s["grpo"] for s in reversed(rounds.values()) if "grpo" in s), None),
        "evals": evals,
        "gains": gains(evals, rates),
        "benchmarks": benchmarks,
        "published": published_numbers(published_as),
        "timing": timing,
    }


def gains(evals: dict[str, Any], rates: dict[str, Any]) -> list[dict[str, Any]]:
    """The final model against round-0 SFT, then each round against its compute-matched control."""
    out = []
    names = _eval_order(evals)
    final = "grpo" if "grpo" in evals else (names[-1] if names else None)
    if "round_0_sft" in evals and final not in (None, "round_0_sft"):
        out.append(difference(final, "round_0_sft", evals, rates))
    for n in names:
        if (m := re.fullmatch(r"round_(\d+)_control", n)) and f"round_{m.group(1)}_sft" in evals:
            out.append(difference(f"round_{m.group(1)}_sft", n, evals, rates))
    return out


def _eval_order(evals: dict[str, Any]) -> list[str]:
    """base, then round by round (the control before its round's model), grpo last."""

    def key(name: str) -> tuple[int, int, str]:
        m = re.fullmatch(r"round_(\d+)_(sft|control)", name)
        if m:
            return (int(m.group(1)), 0 if m.group(2) == "control" else 1, name)
        if name == "base":
            return (-1, 0, name)
        return (10**6 if name == "grpo" else 10**5, 0, name)

    return sorted(evals, key=key)


def _maj_key(names: list[str], evals: dict[str, Any]) -> list[str]:
    """The largest maj@k any evaluation reports, as a one-item list (or none)."""
    return sorted({k for n in names for k in evals[n] if k.startswith("maj@")}, key=lambda k: int(k[4:]))[-1:]


# ------------------------------------------------------------------------------------------ plots


def _label_bars(ax: Any, bars: Any, errors: list[float] | None, fmt: str, fontsize: float = 7) -> None:
    """The value above each bar, above its error bar's cap when it has one."""
    for i, bar in enumerate(bars):
        height = bar.get_height()
        if not math.isnan(height):
            err = errors[i] if errors is not None and not math.isnan(errors[i]) else 0.0
            ax.annotate(
                format(height, fmt), (bar.get_x() + bar.get_width() / 2, height + err), xytext=(0, 2),
                textcoords="offset points", ha="center", va="bottom", fontsize=fontsize,
            )  # fmt: skip


def _grouped_bars(
    ax: Any,
    groups: list[str],
    series: list[tuple[str, list[float], list[float | None] | None]],
    fmt: str,
    label_values: bool = True,
) -> None:
    """One group of bars per entry of `groups`, one bar per series (label, values, standard errors)."""
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (label, values, errors) in enumerate(series):
        yerr = None if errors is None else [np.nan if e is None else e for e in errors]
        bars = ax.bar(
            x + (i - (len(series) - 1) / 2) * width, values, width, yerr=yerr, capsize=3, label=label,
            error_kw={"elinewidth": 1},
        )  # fmt: skip
        if label_values:
            _label_bars(ax, bars, yerr, fmt, fontsize=7 if len(groups) * len(series) <= 24 else 6)
    ax.set_xticks(x, groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)


def _top(values: list[float], errors: list[float | None], ceiling: float) -> float:
    """A y limit that holds every bar, its error bar and its label, at most `ceiling`."""
    highest = max([v + (e or 0) for v, e in zip(values, errors, strict=True) if not math.isnan(v)], default=0)
    return min(ceiling, max(0.05 * ceiling, highest * 1.25))


def plot_accuracy(evals: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    names = _eval_order(evals)
    keys = [k for k in ACCURACY_KEYS if any(k in evals[n] for n in names)] + _maj_key(names, evals)
    series = [
        (k, [evals[n].get(k, math.nan) for n in names], [evals[n]["stderr"].get(k) for n in names])
        for k in keys
    ]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.35 * len(names) * len(keys) + 1.5), 4.2), layout="constrained")
    _grouped_bars(ax, names, series, ".3f", label_values=len(names) * len(keys) <= 48)
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylim(0, _top([v for _, vs, _ in series for v in vs], [e for *_, es in series for e in es], 1.0))
    ax.set_ylabel("held-out accuracy")
    fig.suptitle("Held-out accuracy per model, ± 1 standard error over prompts", fontsize=11)
    ax.set_title("a round's control: the same steps on the data the previous model already had", fontsize=8)
    ax.legend(fontsize=8, ncols=len(keys), loc="upper left")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for k, stages in summary["rounds"].items():
        for name, style in (("sft", "-"), ("sft_control", "--")):
            curve = (stages.get(name) or {}).get("loss", {}).get("curve")
            if curve:
                axes[0].plot(*zip(*curve, strict=True), style, label=f"round {k} {name}")
        rm = stages.get("reward_model") or {}
        if rm.get("eval_curve"):
            axes[1].plot(*zip(*rm["eval_curve"], strict=True), "o-", label=f"round {k} held-out")
    axes[0].set(title="SFT loss", xlabel="step", yscale="log")
    axes[1].set(title="Reward-model pairwise accuracy (held-out)", xlabel="step", ylim=(0, 1))
    axes[1].set_xlim(left=0)  # a reward model evaluated once is one point: keep the axis from 0
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    grpo = summary.get("grpo") or {}
    for name, values in (grpo.get("reward_curves") or {}).items():
        axes[2].plot(*zip(*values, strict=True), label=name)
    axes[2].set(title="GRPO reward (per reward function)", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _empty(ax: Any, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_rounds(summary: dict[str, Any], path: Path) -> None:
    """Per round, as grouped bars with their values: a line through one point is a dot, and a line
    through rounds 0..4 hides which round a value belongs to."""
    import matplotlib.pyplot as plt

    rs_rounds = [k for k, s in summary["rounds"].items() if "reject_sampling" in s]
    rs = [summary["rounds"][k]["reject_sampling"] for k in rs_rounds]
    rm_rounds = [k for k, s in summary["rounds"].items() if "reward_model" in s]
    width = max(13, 3 * (1.5 + 0.8 * max(len(rs_rounds), len(rm_rounds))))
    fig, axes = plt.subplots(1, 3, figsize=(width, 4), layout="constrained")
    labels = [f"round {k}" for k in rs_rounds]
    if rs:
        _grouped_bars(axes[0], labels, [
            ("acceptance (prompts)", [m["acceptance_rate"] for m in rs], None),
            ("pass@1 on sampled prompts", [m["pass@1"] for m in rs], None),
            ("truncation rate", [m["truncation_rate"] for m in rs], None),
        ], ".2f")  # fmt: skip
        axes[0].set(title="Rejection sampling per round", ylim=(0, 1.1))
        _grouped_bars(axes[1], labels, [
            ("mean", [m["completion_tokens"]["mean"] for m in rs], None),
            ("p90", [m["completion_tokens"]["p90"] for m in rs], None),
        ], ".0f")  # fmt: skip
        top = max(m["completion_tokens"]["p90"] for m in rs)
        axes[1].set(title="Completion length per round (tokens)", ylim=(0, 1.2 * top if top else 1))
    else:
        _empty(axes[0], "Rejection sampling per round", "no rejection sampling yet")
        _empty(axes[1], "Completion length per round (tokens)", "no rejection sampling yet")
    rm = [summary["rounds"][k]["reward_model"] for k in rm_rounds]
    if rm:
        accuracy = [m.get("eval_accuracy", math.nan) for m in rm]
        pairs = [(m.get("data") or {}).get("pairs_eval") or 0 for m in rm]
        errors = [
            binary_stderr(a, n) if not math.isnan(a) else None for a, n in zip(accuracy, pairs, strict=True)
        ]
        series = [("held-out pairs, ± 1 s.e.", accuracy, errors)]
        _grouped_bars(axes[2], [f"round {k}" for k in rm_rounds], series, ".2f")
        axes[2].axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
        axes[2].set(title="Reward-model pairwise accuracy", ylim=(0, 1.1))
    else:
        _empty(axes[2], "Reward-model pairwise accuracy", "no reward model")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_benchmarks(benchmarks: dict[str, Any], published: dict[str, Any] | None, path: Path) -> None:
    """pass@1 (%) per benchmark, one bar per model with its standard error; the published number of the
    base model as a black line across the benchmark's group."""
    import matplotlib.pyplot as plt

    models = _eval_order(benchmarks)
    names = _benchmark_order(benchmarks)
    series = [
        (
            model,
            [100 * benchmarks[model][b]["pass@1"] if b in benchmarks[model] else math.nan for b in names],
            [_percent(benchmarks[model][b]["stderr"].get("pass@1")) if b in benchmarks[model] else None for b in names],
        )
        for model in models
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(6.5, 0.5 * len(names) * len(models) + 2), 4.2), layout="constrained")
    _grouped_bars(ax, names, series, ".1f")
    values = published.get("pass@1", {}) if published and not published.get("missing") else {}
    for i, b in enumerate(names):
        if b in values:
            ax.hlines(values[b], i - 0.45, i + 0.45, colors="black", lw=1.5)
            ax.annotate(f"published {values[b]:g}", (i, values[b]), xytext=(0, 3), textcoords="offset points",
                        ha="center", fontsize=7)  # fmt: skip
    if values:
        ax.plot([], [], color="black", lw=1.5, label=f"published: {published['name']}")
    ax.set_ylim(0, 105)
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("Benchmarks: pass@1 per model, ± 1 standard error over problems", fontsize=11)
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _benchmark_order(benchmarks: dict[str, Any]) -> list[str]:
    """Benchmarks in the order the run first lists them."""
    out: list[str] = []
    for per_model in benchmarks.values():
        out += [b for b in per_model if b not in out]
    return out


# ------------------------------------------------------------------------------------------ markdown


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "–" if v is None else str(v)


def _pm(value: Any, se: float | None, scale: float = 1.0, digits: int = 3, sign: str = "") -> str:
    """'0.196 ± 0.019' (or without ± when there is no standard error); sign="+" for differences."""
    if value is None:
        return "–"
    text = f"{scale * value:{sign}.{digits}f}"
    return text if se is None else f"{text} ± {scale * se:.{digits}f}"


def heldout_section(summary: dict[str, Any]) -> list[str]:
    evals = summary["evals"]
    if not evals:
        return []
    names = _eval_order(evals)
    keys = [*ACCURACY_KEYS, *_maj_key(names, evals)]
    lines = [
        "## Held-out accuracy",
        "",
        "| model | " + " | ".join(keys) + " | truncation_rate | prompts |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for n in names:
        m = evals[n]
        cells = [_pm(m.get(k), m["stderr"].get(k)) if k in m else "–" for k in keys]
        lines.append(
            f"| {n} | "
            + " | ".join(cells)
            + f" | {_fmt(m.get('truncation_rate'))} | {_fmt(m.get('prompts'))} |"
        )
    how = sorted({evals[n]["stderr_how"].get("pass@1") for n in names} - {None})
    lines += ["", f"± one standard error over prompts. pass@1's: {', '.join(STDERR_HOW[h] for h in how)}; "
              "greedy and best-of-N: exact from their 0/1 per-prompt results; maj@k: the bound "
              "sqrt(p(1-p)/(prompts-1)).", ""]  # fmt: skip
    for g in summary["gains"]:
        what = (
            f"Round {g['a'].split('_')[1]} vs its compute-matched control"
            if g["b"].endswith("_control")
            else f"pass@1 of `{g['a']}` vs `{g['b']}`"
        )
        lines.append(f"{what}: {_pm(g['diff'], g['stderr'], 100, 1, '+')} points ({g['how']}).")
    return [*lines, ""]


STDERR_HOW = {
    "metrics": "from the evaluation (`pass@1_stderr`)",
    "scored.parquet": "std of the per-prompt pass rates in scored.parquet / sqrt(prompts)",
    "bound": "the bound sqrt(p(1-p)/(prompts-1)) (no scored.parquet)",
}


def benchmark_section(summary: dict[str, Any]) -> list[str]:
    benchmarks, published = summary["benchmarks"], summary["published"]
    if not benchmarks:
        return []
    names = _benchmark_order(benchmarks)
    lines = ["## Benchmarks", "", "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for model in _eval_order(benchmarks):
        cells = []
        for b in names:
            m = benchmarks[model].get(b)
            cells.append(
                "–" if m is None else
                f"{_pm(m['pass@1'], m['stderr'].get('pass@1'), 100, 1)} ({m.get('prompts')} × {m.get('samples_per_prompt')})"
            )  # fmt: skip
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if published and not published.get("missing"):
        values = published.get("pass@1", {})
        lines.append(
            f"| published: {published['name']} | " + " | ".join(f"{values[b]:.1f}" if b in values else "–" for b in names) + " |"
        )  # fmt: skip
    protocols = sorted({str(m.get("protocol")) for per in benchmarks.values() for m in per.values()})
    lines += ["", "pass@1 in percent ± one standard error over problems (problems × samples per problem); "
              f"decoding protocol of these runs: {', '.join(protocols)}."]  # fmt: skip
    if published and published.get("missing"):
        lines.append(
            f"No published numbers for `{published['name']}` in pipeline/published.yaml (it holds "
            f"{', '.join(published['known'])})."
        )
    elif published:
        lines.append(
            f"Published ({published.get('protocol', 'protocol not given')}): {published.get('source')}. "
            "Comparable only where the protocol matches."
        )
    return [*lines, ""]


def rounds_section(summary: dict[str, Any]) -> list[str]:
    lines = ["## Rounds", "", "| round | SFT steps | SFT final loss | RM held-out acc | pass@1 (sampled) | acceptance | selected | pairs | mean tokens | truncation |", "|---" * 10 + "|"]  # fmt: skip
    for k, s in summary["rounds"].items():
        sft, rm, rs = s.get("sft") or {}, s.get("reward_model") or {}, s.get("reject_sampling") or {}
        rm_se = binary_stderr(rm["eval_accuracy"], (rm.get("data") or {}).get("pairs_eval") or 0) if "eval_accuracy" in rm else None  # fmt: skip
        lines.append(
            f"| {k} | {_fmt(sft.get('global_step'))} | {_fmt((sft.get('loss') or {}).get('last_tenth_mean'))} | "
            f"{_pm(rm.get('eval_accuracy'), rm_se)} | {_fmt(rs.get('pass@1'))} | {_fmt(rs.get('acceptance_rate'))} | "
            f"{_fmt(rs.get('selected_records'))} | {_fmt(rs.get('pairs'))} | "
            f"{_fmt((rs.get('completion_tokens') or {}).get('mean'))} | {_fmt(rs.get('truncation_rate'))} |"
        )
    empty = [
        k
        for k, s in summary["rounds"].items()
        if (s.get("reject_sampling") or {}).get("selected_records") == 0
    ]
    lines.append("")
    for k in empty:
        lines.append(
            f"Round {k}'s rejection sampling kept no sample (no prompt had a verified-correct one): round {k + 1} "
            f"trained on the original records and pairs alone."
        )
    return [*lines, ""] if empty else lines


def markdown(run_dir: Path, summary: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# Run report: `{run_dir}`", "", *heldout_section(summary), *benchmark_section(summary)]
    lines += rounds_section(summary)
    if summary["data"]:
        d = summary["data"]
        keys = ("rows_read", "rows_kept", "rows_dropped", "decontaminated", "prompts", "sft", "pairs")
        lines += ["## Data", "", "```", json.dumps({k: d[k] for k in keys if k in d}, indent=1), "```", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    timing = summary.get("timing")
    if timing:
        lines += ["## Wall time (last invocation of the pipeline)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {s['name']} | {_fmt(s.get('seconds'))} |" for s in timing["steps"]]
        lines += [f"| total | {_fmt(timing.get('total_seconds'))} |", ""]
    configs = sorted(
        p.relative_to(run_dir).as_posix() for p in run_dir.rglob("config.yaml") if "multirun" not in p.parts
    )
    lines += (
        ["## Configs", "", "Each stage's resolved config:", ""]
        + [f"- [`{c}`](../{c})" for c in configs]
        + [""]
    )
    return "\n".join(lines)


def write_report(run_dir: str | Path, published_as: str | None = None) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    import matplotlib

    matplotlib.use("Agg")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = collect(run_dir, published_as)
    plots = []
    if summary["evals"]:
        plot_accuracy(summary["evals"], out / "accuracy.png")
        plots.append("accuracy.png")
    if summary["benchmarks"]:
        plot_benchmarks(summary["benchmarks"], summary["published"], out / "benchmarks.png")
        plots.append("benchmarks.png")
    if summary["rounds"] or summary["grpo"]:
        plot_curves(summary, out / "curves.png")
        plots.append("curves.png")
    if any({"reject_sampling", "reward_model"} & set(s) for s in summary["rounds"].values()):
        plot_rounds(summary, out / "rounds.png")
        plots.append("rounds.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    path = out / "report.md"
    path.write_text(markdown(run_dir, summary, plots))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument(
        "--published-as",
        help="Key of pipeline/published.yaml whose numbers go beside the benchmarks (default: pipeline.json's).",
    )
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.published_as))


if __name__ == "__main__":
    main()
