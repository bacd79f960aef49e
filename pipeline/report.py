"""The run report: `python -m pipeline.report RUN_DIR` → RUN_DIR/report/report.md + PNG plots.

Everything comes from the manifests the stages wrote (nothing is recomputed), so the report can be
rebuilt at any time, also for a run that is still going or stopped half-way: stages without a manifest
are simply absent. Contents:

- held-out accuracy (pass@1, maj@k, best-of-N, greedy) of every evaluated model, each round beside its
  compute-matched control, and the gain of the final model over round-0 SFT;
- training curves: SFT loss per round (controls dashed), reward-model accuracy, GRPO reward;
- per round: reward-model held-out accuracy, acceptance rate, completion lengths and truncation;
- data counts per stage, wall time per stage (pipeline.json) and each stage's resolved config.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from core.artifacts import read_manifest

ACCURACY_KEYS = ("pass@1", "greedy_accuracy", "best_of_n_rm")


def _rounds(run_dir: Path) -> list[int]:
    found = [int(m.group(1)) for p in run_dir.glob("round_*") if (m := re.fullmatch(r"round_(\d+)", p.name))]
    return sorted(found)


def _metrics(stage_dir: Path) -> dict[str, Any] | None:
    manifest = read_manifest(stage_dir)
    return manifest.metrics if manifest else None


def collect(run_dir: Path) -> dict[str, Any]:
    """Every metric the report shows, as plain data (also written to report/summary.json).

    With a pipeline.json, only the stages of its plan count (a step's name is its directory under the
    run): a directory an earlier plan of the same run left behind, e.g. round 2 of a rounds=3 attempt
    re-run with rounds=2, is not this run's and must not show up in its tables."""
    timing = (
        json.loads((run_dir / "pipeline.json").read_text()) if (run_dir / "pipeline.json").exists() else None
    )
    planned = {s["name"] for s in timing["steps"]} if timing else None

    def metrics(rel: str) -> dict[str, Any] | None:
        return _metrics(run_dir / rel) if planned is None or rel in planned else None

    evals = {d.name: m for d in sorted((run_dir / "eval").glob("*")) if (m := metrics(f"eval/{d.name}"))}
    rounds = {}
    for k in _rounds(run_dir):
        stages = ("sft", "sft_control", "reward_model", "reject_sampling", "grpo")
        found = {name: m for name in stages if (m := metrics(f"round_{k}/{name}")) is not None}
        if found:
            rounds[k] = found
    return {
        "data": _metrics(run_dir / "data"),
        "rounds": rounds,
        "grpo": next((s["grpo"] for s in reversed(rounds.values()) if "grpo" in s), None),
        "evals": evals,
        "timing": timing,
    }


def _eval_order(evals: dict[str, Any]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        m = re.fullmatch(r"round_(\d+)_(sft|control)", name)
        if m:
            return (int(m.group(1)), 0 if m.group(2) == "control" else 1, name)
        return (10**6 if name == "grpo" else 10**5, 0, name)

    return sorted(evals, key=key)


def plot_accuracy(evals: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    names = _eval_order(evals)
    keys = [k for k in ACCURACY_KEYS if any(k in evals[n] for n in names)]
    keys += sorted({k for n in names for k in evals[n] if k.startswith("maj@")}, key=lambda k: int(k[4:]))[
        -1:
    ]
    x = np.arange(len(names))
    width = 0.8 / max(1, len(keys))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    for i, k in enumerate(keys):
        ax.bar(x + i * width, [evals[n].get(k, np.nan) for n in names], width, label=k)
    ax.set_xticks(x + width * (len(keys) - 1) / 2, names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Held-out accuracy per stage (controls: same steps on the data the model already had)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, stages in summary["rounds"].items():
        for name, style in (("sft", "-"), ("sft_control", "--")):
            curve = (stages.get(name) or {}).get("loss", {}).get("curve")
            if curve:
                axes[0].plot(*zip(*curve, strict=True), style, label=f"round {k} {name}")
        rm = stages.get("reward_model") or {}
        if rm.get("eval_curve"):
            axes[1].plot(*zip(*rm["eval_curve"], strict=True), "o-", label=f"round {k} held-out")
    axes[0].set(title="SFT loss", xlabel="step", yscale="log")
    axes[1].set(title="Reward-model pairwise accuracy", xlabel="step", ylim=(0, 1))
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    grpo = summary.get("grpo") or {}
    for name, values in (grpo.get("reward_curves") or {}).items():
        axes[2].plot(*zip(*values, strict=True), label=name)
    axes[2].set(title="GRPO reward (per reward function)", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rounds(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rounds = [k for k, s in summary["rounds"].items() if "reject_sampling" in s]
    rs = [summary["rounds"][k]["reject_sampling"] for k in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(rounds, [m["acceptance_rate"] for m in rs], "o-", label="acceptance (prompts)")
    axes[0].plot(rounds, [m["pass@1"] for m in rs], "s-", label="pass@1 on sampled prompts")
    axes[0].plot(rounds, [m["truncation_rate"] for m in rs], "^-", label="truncation rate")
    axes[0].set(title="Rejection sampling per round", xlabel="round", ylim=(0, 1))
    axes[1].plot(rounds, [m["completion_tokens"]["mean"] for m in rs], "o-", label="mean")
    axes[1].plot(rounds, [m["completion_tokens"]["p90"] for m in rs], "s-", label="p90")
    axes[1].set(title="Completion length (tokens)", xlabel="round")
    for ax in axes:
        ax.set_xticks(rounds)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "–" if v is None else str(v)


def markdown(run_dir: Path, summary: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# Run report: `{run_dir}`", ""]
    evals = summary["evals"]
    if evals:
        names = _eval_order(evals)
        maj = sorted({k for n in names for k in evals[n] if k.startswith("maj@")}, key=lambda k: int(k[4:]))
        cols = [*ACCURACY_KEYS, *maj[-1:], "truncation_rate"]
        lines += [
            "## Held-out accuracy",
            "",
            "| model | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        lines += [f"| {n} | " + " | ".join(_fmt(evals[n].get(c)) for c in cols) + " |" for n in names]
        first = evals.get("round_0_sft", {}).get("pass@1")
        final_name = "grpo" if "grpo" in evals else names[-1]
        if first is not None:
            gain = evals[final_name]["pass@1"] - first
            lines += ["", f"pass@1 of `{final_name}` vs `round_0_sft`: {gain * 100:+.1f} points."]
        for n in names:
            if (m := re.fullmatch(r"round_(\d+)_control", n)) and f"round_{m.group(1)}_sft" in evals:
                d = evals[f"round_{m.group(1)}_sft"]["pass@1"] - evals[n]["pass@1"]
                lines.append(
                    f"Round {m.group(1)} vs its compute-matched control: {d * 100:+.1f} points pass@1."
                )
        lines.append("")
    lines += ["## Rounds", "", "| round | SFT steps | SFT final loss | RM held-out acc | pass@1 (sampled) | acceptance | selected | pairs | mean tokens | truncation |", "|---" * 10 + "|"]  # fmt: skip
    for k, s in summary["rounds"].items():
        sft, rm, rs = s.get("sft") or {}, s.get("reward_model") or {}, s.get("reject_sampling") or {}
        lines.append(
            f"| {k} | {_fmt(sft.get('global_step'))} | {_fmt((sft.get('loss') or {}).get('last_tenth_mean'))} | "
            f"{_fmt(rm.get('eval_accuracy'))} | {_fmt(rs.get('pass@1'))} | {_fmt(rs.get('acceptance_rate'))} | "
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
    if empty:
        lines.append("")
    if summary["data"]:
        d = summary["data"]
        lines += ["## Data", "", "```", json.dumps({k: d[k] for k in d if k in ("rows_read", "rows_kept", "rows_dropped", "prompts", "sft", "pairs")}, indent=1), "```", ""]  # fmt: skip
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


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    import matplotlib

    matplotlib.use("Agg")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = collect(run_dir)
    plots = []
    if summary["evals"]:
        plot_accuracy(summary["evals"], out / "accuracy.png")
        plots.append("accuracy.png")
    if summary["rounds"] or summary["grpo"]:
        plot_curves(summary, out / "curves.png")
        plots.append("curves.png")
    if any("reject_sampling" in s for s in summary["rounds"].values()):
        plot_rounds(summary, out / "rounds.png")
        plots.append("rounds.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    path = out / "report.md"
    path.write_text(markdown(run_dir, summary, plots))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.report RUN_DIR")
    print(write_report(sys.argv[1]))
