"""Near-duplicate detection: data_process/dedup.py's own MinHash-LSH against datasketch's (issue R3).

The question: is datasketch's MinHashLSH at least as fast as `NearDuplicateIndex` AND does it find the same
duplicates? Only then would data_process switch to it.

Input: the problems of bench/data_process_throughput.py's synthetic OpenR1 shards (the same generator and
arguments, and its cache in --work-dir, so both benchmarks read the same rows). They are fed to each index
one at a time, in order, as the stage feeds them (`add_if_new`: a duplicate is dropped, a new problem is
added), as three streams:
- `raw`: every problem, so the generator's copies ("Example 3. " + an earlier problem) are near duplicates
  of Jaccard 1;
- `after_exact`: what the stage gives the near-duplicate index, problems whose exact key is new;
- `edited`: `after_exact` with an edited copy of some problems inserted later (`--edited`, a share of the
  problems long enough to be judged): a word appended, prepended, replaced or dropped, numbers unchanged.
  The synthetic data itself has few near duplicates that are not exact ones, and this stream is where two
  MinHash implementations can disagree: edits put true Jaccard similarities on both sides of the threshold.

Methods, all with the stage's settings (threshold 0.8, 64 permutations, word 3-gram shingles, problems
under 5 shingles judged by the exact key alone, a candidate confirmed only when the estimated Jaccard
reaches the threshold AND both problems contain the same numbers; see data_process/dedup.py):
- `ours`: `data_process.dedup.NearDuplicateIndex` (16 bands x 4 rows; it compares a candidate with the first
  problem of each matching bucket);
- `datasketch`: datasketch's `MinHash` + `MinHashLSH` on the same shingles (our crc32 values, identity
  hash), `params=(16, 4)`, every candidate the LSH returns compared;
- `datasketch_defaults`: what datasketch's documentation leads to: SHA-1 of the shingle strings and the
  bands/rows it picks itself for the threshold (`MinHashLSH(threshold, num_perm)`);
- `exact`: the reference, exact Jaccard of the shingle sets against every kept problem with the same
  numbers (affordable because the number check makes the groups small).

Measured: seconds for the whole stream (shingling included, since switching means paying all of it; the
best of `--repeats` fresh runs), peak traced memory (tracemalloc, one extra untimed pass), the problems each
flags as duplicates, agreement with `ours` and with `exact`, and for each disagreement the true Jaccard.
Decision rule printed and recorded: switch only if `datasketch` is no slower than `ours` on every stream
and flags exactly the same problems.

    python bench/dedup_datasketch.py --rows 50000 --work-dir /tmp/bench_data_process
    python bench/dedup_datasketch.py --smoke      # seconds (CI); without datasketch only ours and exact run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data_process_throughput as dpt  # bench/, the script's own folder
from _common import parse_args, results_path

from data_process.dedup import _NUMBER, NearDuplicateIndex, exact_key, shingles, tokens

THRESHOLD, NUM_PERM, BANDS, SHINGLE, MIN_SHINGLES = 0.8, 64, 16, 3, 5
SMOKE = {"rows": 400, "verbose_words": 20, "shard_rows": 400, "repeats": 1}


# ---------------------------------------------------------------------------------------------- input


def load_problems(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    import pyarrow.parquet as pq

    root, info = dpt.ensure_input(args)
    problems = [
        p for f in info["files"] for p in pq.read_table(root / f, columns=["problem"])["problem"].to_pylist()
    ]
    return problems, {**info, "root": str(root)}


def _edit(text: str, rng: random.Random) -> tuple[str, str]:
    """One small edit that leaves the numbers alone: (kind, edited text)."""
    words = text.split()
    kind = rng.choice(("append", "prepend", "replace", "drop"))
    plain = [i for i, w in enumerate(words) if not _NUMBER.search(w)]
    if kind == "append":
        words.append(rng.choice(("Explain.", "Show your work.", "Answer with a number.")))
    elif kind == "prepend":
        words.insert(0, rng.choice(("Now,", "Please:", "Question:")))
    elif kind == "replace" and plain:
        words[rng.choice(plain)] = rng.choice(("thing", "item", "then"))
    elif kind == "drop" and len(plain) > 1:
        del words[rng.choice(plain)]
    return kind, " ".join(words)


def streams(problems: list[str], edited_share: float, seed: int) -> dict[str, list[str]]:
    seen: set[bytes] = set()
    after_exact = []
    for p in problems:
        key = exact_key(p)
        if key not in seen:
            seen.add(key)
            after_exact.append(p)
    rng = random.Random(seed)
    edited: list[str] = []
    pending: list[tuple[int, str]] = []  # (insert before this index, text)
    for i, p in enumerate(after_exact):
        if len(shingles(p, SHINGLE)) >= MIN_SHINGLES and rng.random() < edited_share:
            pending.append((rng.randint(i + 1, len(after_exact)), _edit(p, rng)[1]))
    pending.sort(key=lambda x: x[0])
    j = 0
    for i, p in enumerate([*after_exact, None]):
        while j < len(pending) and pending[j][0] == i:
            edited.append(pending[j][1])
            j += 1
        if p is not None:
            edited.append(p)
    return {"raw": problems, "after_exact": after_exact, "edited": edited}


# ---------------------------------------------------------------------------------------------- indexes


def _numbers(text: str) -> tuple[str, ...]:
    return tuple(sorted(_NUMBER.findall(text)))


class ExactIndex:
    """The reference: exact Jaccard of shingle sets, against every kept problem with the same numbers."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], list[set[int]]] = {}

    def best(self, text: str) -> float:
        s = shingles(text, SHINGLE)
        return max((len(s & o) / len(s | o) for o in self.groups.get(_numbers(text), ())), default=0.0)

    def add_if_new(self, text: str) -> bool:
        s = shingles(text, SHINGLE)
        if len(s) < MIN_SHINGLES:
            return True
        group = self.groups.setdefault(_numbers(text), [])
        if any(len(s & o) / len(s | o) >= THRESHOLD for o in group):
            return False
        group.append(s)
        return True


class DatasketchIndex:
    """The same admission rule as NearDuplicateIndex.add_if_new, on datasketch's MinHash and MinHashLSH."""

    def __init__(self, own_defaults: bool = False) -> None:
        from datasketch import MinHash, MinHashLSH

        self.own_defaults = own_defaults
        params = None if own_defaults else (BANDS, NUM_PERM // BANDS)
        self.lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=params)
        # One template, copied per problem: MinHash() itself draws its permutations again every time.
        self.template = MinHash(num_perm=NUM_PERM, hashfunc=None if own_defaults else _identity)
        self.minhashes: list[Any] = []
        self.numbers: list[int] = []

    def _shingles(self, text: str) -> set:
        if self.own_defaults:  # the shingle strings, hashed by datasketch (SHA-1)
            toks = tokens(text)
            return {" ".join(toks[i : i + SHINGLE]).encode() for i in range(len(toks) - SHINGLE + 1)}
        return shingles(text, SHINGLE)

    def add_if_new(self, text: str) -> bool:
        grams = self._shingles(text)
        if len(grams) < MIN_SHINGLES:
            return True
        m = self.template.copy()
        m.update_batch(grams)
        numbers = hash(_numbers(text))
        for key in self.lsh.query(m):
            if self.numbers[key] == numbers and m.jaccard(self.minhashes[key]) >= THRESHOLD:
                return False
        key = len(self.minhashes)
        self.minhashes.append(m)
        self.numbers.append(numbers)
        self.lsh.insert(key, m, check_duplication=False)
        return True


def _identity(x: int) -> int:
    return x


def methods() -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {
        "ours": lambda: NearDuplicateIndex(
            threshold=THRESHOLD,
            num_perm=NUM_PERM,
            bands=BANDS,
            shingle_size=SHINGLE,
            min_shingles=MIN_SHINGLES,
        )
    }
    if importlib.util.find_spec("datasketch") is not None:
        out["datasketch"] = DatasketchIndex
        out["datasketch_defaults"] = lambda: DatasketchIndex(own_defaults=True)
    out["exact"] = ExactIndex
    return out


# ---------------------------------------------------------------------------------------------- measuring


def flag(make: Callable[[], Any], texts: list[str]) -> tuple[list[int], float]:
    index = make()
    started = time.perf_counter()
    flagged = [i for i, t in enumerate(texts) if not index.add_if_new(t)]
    return flagged, time.perf_counter() - started


def peak_memory(make: Callable[[], Any], texts: list[str]) -> float:
    tracemalloc.start()
    index = make()
    for t in texts:
        index.add_if_new(t)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del index
    return round(peak / 2**20, 1)


def true_jaccard(texts: list[str], rows: list[int]) -> list[float]:
    """For each row: its best exact Jaccard against the problems before it that have the same numbers."""
    wanted, out, index = set(rows), {}, ExactIndex()
    for i, t in enumerate(texts):
        if i in wanted:
            out[i] = round(index.best(t), 3)
        s = shingles(t, SHINGLE)
        if len(s) >= MIN_SHINGLES:
            index.groups.setdefault(_numbers(t), []).append(s)
    return [out[i] for i in rows]


def compare(texts: list[str], repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "problems": len(texts),
        "judged": sum(len(shingles(t, SHINGLE)) >= MIN_SHINGLES for t in texts),
    }
    flagged: dict[str, set[int]] = {}
    for name, make in methods().items():
        make().add_if_new(texts[0] if texts else "")  # imports and first-call costs stay out of the timing
        times = []
        for _ in range(repeats):
            rows, seconds = flag(make, texts)
            times.append(seconds)
        flagged[name] = set(rows)
        result[name] = {
            "flagged": len(rows),
            "seconds_best": round(min(times), 3),
            "seconds_median": round(statistics.median(times), 3),
            "us_per_problem": round(min(times) / max(1, len(texts)) * 1e6, 1),
            "peak_traced_mib": peak_memory(make, texts),
        }
    for name in flagged:
        if name == "exact":
            continue
        for ref in ("ours", "exact"):
            if ref == name:
                continue
            only_me, only_ref = sorted(flagged[name] - flagged[ref]), sorted(flagged[ref] - flagged[name])
            result[name][f"vs_{ref}"] = {
                "both": len(flagged[name] & flagged[ref]),
                f"{name}_only": len(only_me),
                f"{ref}_only": len(only_ref),
                # the best true Jaccard of each disagreement (at most 20 of each side shown)
                f"{name}_only_true_jaccard": true_jaccard(texts, only_me[:20]),
                f"{ref}_only_true_jaccard": true_jaccard(texts, only_ref[:20]),
            }
    return result


def _cell(v: dict[str, Any] | None, mine: str, theirs: str) -> str:
    return f"{v['both']} / {v[mine]} / {v[theirs]}" if v else ""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000, help="rows of data_process_throughput.py's input")
    parser.add_argument("--verbose-words", type=int, default=3000)
    parser.add_argument("--shard-rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work-dir", default=None, help="default /tmp/bench_data_process (shared input cache)"
    )
    parser.add_argument(
        "--edited", type=float, default=0.05, help="share of judged problems given an edited copy"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per method and stream; the best counts"
    )
    args = parse_args(parser, argv, SMOKE)
    if args.work_dir is None:
        args.work_dir = tempfile.mkdtemp(prefix="bench_dedup_") if args.smoke else "/tmp/bench_data_process"
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    cmd = dpt.command_line()
    print(f"$ {cmd}\n", flush=True)

    problems, info = load_problems(args)
    data = streams(problems, args.edited, args.seed)
    results = {name: compare(texts, args.repeats) for name, texts in data.items()}

    has_ds = "datasketch" in results["raw"]
    if has_ds:
        same = all(
            r["datasketch"]["vs_ours"]["datasketch_only"] == r["datasketch"]["vs_ours"]["ours_only"] == 0
            for r in results.values()
        )
        fast = all(r["datasketch"]["seconds_best"] <= r["ours"]["seconds_best"] for r in results.values())
        decision = "switch to datasketch" if same and fast else "keep ours"
        why = f"same duplicates: {'yes' if same else 'no'}; at least as fast: {'yes' if fast else 'no'}"
    else:
        decision, why = "undecided", "datasketch is not installed; only ours and exact ran"

    names = [m for m in methods() if m in results["raw"]]
    lines = [
        "| stream | problems (judged) | method | flagged | s (best) | us/problem | peak MiB | both / only this / only ours | both / only this / only exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stream, r in results.items():
        for m in names:
            x = r[m]
            vo, ve = x.get("vs_ours"), x.get("vs_exact")
            lines.append(
                f"| {stream} | {r['problems']:,} ({r['judged']:,}) | {m} | {x['flagged']:,} | {x['seconds_best']:.2f} "
                f"| {x['us_per_problem']:.1f} | {x['peak_traced_mib']:.1f} "
                f"| {_cell(vo, f'{m}_only', 'ours_only')} | {_cell(ve, f'{m}_only', 'exact_only')} |"
            )
    table = "\n".join(lines)
    print(f"{table}\n\ndecision: {decision} ({why})")

    from core.artifacts import git_revision, library_versions

    versions = library_versions()
    if has_ds:
        from importlib.metadata import version

        versions["datasketch"] = version("datasketch")
    out = results_path(args, "dedup_datasketch")
    summary = {
        "command": cmd,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "git_revision": git_revision(),
            "versions": versions,
        },
        "load_average": os.getloadavg()[0],
        "args": vars(args),
        "input": info,
        "settings": {
            "threshold": THRESHOLD,
            "num_perm": NUM_PERM,
            "bands": BANDS,
            "shingle": SHINGLE,
            "min_shingles": MIN_SHINGLES,
        },
        "streams": results,
        "decision": decision,
        "why": why,
        "markdown": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return summary


if __name__ == "__main__":
    main()
