"""Every bench/ script runs end to end with `--smoke` (tiny sizes, the same code as the real benchmark) and
its results file holds what the benchmark reports, so a benchmark cannot rot unnoticed. Each runs as a user
runs it, a subprocess on its command line; speeds are checked to be measured (finite, positive), never
against a figure (those are in docs/results.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import offline_env

REPO = Path(__file__).resolve().parent.parent
HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_DATASKETCH = importlib.util.find_spec("datasketch") is not None


def run_bench(script: str, out: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "bench" / script), "--smoke", "--out", str(out), *args]
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(out.read_text())


def measured(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def parquet_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def test_data_process_throughput_both_tokenizers(tmp_path, tiny_model):
    work = tmp_path / "work"
    res = run_bench(
        "data_process_throughput.py",
        tmp_path / "dp.json",
        "--work-dir",
        str(work),
        "--tiny-dir",
        tiny_model["policy"],
    )
    shards = sorted(
        (work / f"openr1_rows{res['args']['rows']}_vw50_seed0_shard100" / "default").glob("*.parquet")
    )
    assert len(shards) == 2 and parquet_rows(shards) == res["args"]["rows"] == 200
    rows = {"small_0.1k": parquet_rows(shards[:1]), "full_0.2k": parquet_rows(shards)}
    runs = {(r["tokenizer"], r["label"].rsplit("_", 1)[0]): r for r in res["runs"]}
    assert set(runs) == {(t, size) for t in ("tiny", "qwen2.5") for size in rows} and len(res["runs"]) == 4
    for (_, size), r in runs.items():
        m = r["metrics"]
        assert r["input"]["rows"] == m["rows_read"] == rows[size]
        assert m["rows_kept"] + sum(m["rows_dropped"].values()) == rows[size]
        assert 0 < m["sft"]["written"] <= m["rows_kept"]
        assert r["outputs"]["sft"]["rows"] == m["sft"]["written"]
        assert r["outputs"]["prompts"]["rows"] == m["rows_kept"]
        for key in (
            "rows_per_s",
            "rows_per_s_wall",
            "rows_per_cpu_s",
            "sft_tokens_per_s",
            "peak_rss_mib",
            "stage_s",
        ):
            assert measured(r[key]), (r["label"], key, r[key])
    # Both tokenizers read the same rows; the real one really was used: its 151k vocabulary cuts the same
    # records into far fewer tokens than the tiny 384-token one.
    for size in rows:
        qwen, tiny = runs["qwen2.5", size]["metrics"], runs["tiny", size]["metrics"]
        assert qwen["rows_kept"] == tiny["rows_kept"]
        assert qwen["sft"]["tokens"] < tiny["sft"]["tokens"]
    assert "tokenizer.json" in {p.name for p in Path(res["tokenizers"]["qwen2.5"]["policy_dir"]).iterdir()}
    assert "qwen2.5" in res["verdict"] and "tiny" in res["verdict"]


def test_generation_throughput(tmp_path, tiny_model):
    res = run_bench("generation_throughput.py", tmp_path / "gen.json", "--model", tiny_model["policy"])
    expected = {"transformers"} | ({"vllm, prefix caching on"} if HAS_VLLM else set())
    assert set(res["results"]) == expected
    prompts, max_new = res["args"]["prompts"], res["args"]["max_new_tokens"]
    for name, r in res["results"].items():
        assert r["startup_s"] >= 0
        assert set(r["runs"]) == {"1", "4", "16"}
        for n, run in r["runs"].items():
            assert run["samples"] == prompts * int(n), (name, n)
            assert 0 < run["tokens"] <= run["samples"] * max_new
            assert measured(run["tokens_per_s"]) and len(run["seconds"]) == res["args"]["repeats"] == 1
            assert 0 <= run["truncated"] <= 1


def test_sampling_backends(tmp_path, tiny_model):
    res = run_bench("sampling_backends.py", tmp_path / "backends.json", "--model", tiny_model["policy"])
    assert set(res["results"]) == {"transformers, 1 thread", "ray, transformers engines"}
    local, ray = res["results"]["transformers, 1 thread"], res["results"]["ray, transformers engines"]
    assert ray["identical"] and ray["same_samples_as"] == "transformers, 1 thread"
    assert ray["tokens"] == local["tokens"] and 0 < local["tokens"] <= 8 * 4 * 8
    assert measured(ray["tokens_per_s_wall"]) and res["ray_cluster_start_s"] > 0


def test_reward_model_mistakes(tmp_path, tiny_model):
    from data_process.synthetic import WRONG_KINDS

    res = run_bench("reward_model_mistakes.py", tmp_path / "rm.json", "--model", tiny_model["policy"])
    assert (res["pairs"], res["steps"]) == (60, 3)
    assert [r["mistake"] for r in res["results"]] == list(WRONG_KINDS)
    for r in res["results"]:
        assert 0 < r["held_out_pairs"] < res["pairs"]
        assert 0 <= r["accuracy"] <= 1 and math.isfinite(r["margin"]) and measured(r["seconds"])


def test_sft_throughput_gpu_shape_on_cpu(tmp_path, tiny_model):
    """The Qwen2.5-1.5B-shape path (a Qwen2 model built, saved in bf16 and trained by both trainers), shrunk."""
    res = run_bench(
        "sft_throughput.py",
        tmp_path / "sft.json",
        "--model",
        "qwen2.5-1.5b-shape",
        "--tiny-dir",
        tiny_model["policy"],
    )
    args = res["args"]
    assert args["model"] == "qwen2.5-1.5b-shape" and args["smoke"]
    assert 0 < res["mean_example_tokens"] <= args["max_length"]
    assert measured(res["flops_per_token"])
    for name in ("ours", "plain_trl"):
        r = res[name]
        assert r["steps"] == args["steps"] - args["warmup"]
        assert r["tokens"] > 0 and measured(r["tokens_per_s"]) and measured(r["seconds"])
        assert measured(r.get("peak_gpu_gb", r.get("peak_rss_gb")))
    assert res["speedup"] == pytest.approx(
        res["ours"]["tokens_per_s"] / res["plain_trl"]["tokens_per_s"], abs=0.01
    )


def test_dedup_datasketch(tmp_path):
    import pyarrow.parquet as pq

    from data_process.dedup import exact_key, shingles

    res = run_bench("dedup_datasketch.py", tmp_path / "dedup.json", "--work-dir", str(tmp_path / "work"))
    root = Path(res["input"]["root"])
    problems = [p for f in res["input"]["files"] for p in pq.read_table(root / f)["problem"].to_pylist()]
    keys = [exact_key(p) for p in problems]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    copies = [i for i, k in enumerate(keys) if first[k] != i]
    # The near-duplicate rule also wants the same numbers, and the generator's "Example 3. " prefixes add
    # one, so of the copies the verbatim ones long enough to be judged are the near duplicates.
    verbatim = [
        i for i in copies if problems[i] == problems[first[keys[i]]] and len(shingles(problems[i])) >= 5
    ]

    streams = res["streams"]
    assert set(streams) == {"raw", "after_exact", "edited"}
    assert streams["raw"]["problems"] == len(problems) == res["args"]["rows"]
    assert streams["after_exact"]["problems"] == len(problems) - len(copies)
    assert streams["edited"]["problems"] > streams["after_exact"]["problems"]
    # On the raw stream the verbatim copies are the near duplicates: the exact reference flags them, ours too.
    assert len(verbatim) > 0
    assert streams["raw"]["exact"]["flagged"] == len(verbatim)
    assert streams["raw"]["ours"]["vs_exact"] == {
        "both": len(verbatim),
        "ours_only": 0,
        "exact_only": 0,
        "ours_only_true_jaccard": [],
        "exact_only_true_jaccard": [],
    }
    methods = {"ours", "exact"} | ({"datasketch", "datasketch_defaults"} if HAS_DATASKETCH else set())
    for stream in streams.values():
        assert set(stream) - {"problems", "judged"} == methods
        for m in methods:
            assert measured(stream[m]["seconds_best"]) and measured(stream[m]["peak_traced_mib"])
    assert res["decision"] in (("keep ours", "switch to datasketch") if HAS_DATASKETCH else ("undecided",))


def test_resume_skip_times_a_finished_pipeline_against_import_torch(tmp_path):
    res = run_bench("resume_skip.py", tmp_path / "rs.json")
    assert res["steps"] == 2 and res["all_skipped"] is True
    for key in ("import_torch_s", "rerun_s", "rerun_over_import_torch", "one_process_per_step_s", "speedup"):
        assert measured(res[key]), (key, res[key])


def test_chaos_resume(tmp_path):
    """The smoke run: the tiny model and data steps, one kill, the same loop and checks as the bench."""
    res = run_bench("chaos_resume.py", tmp_path / "chaos.json", "--work-dir", str(tmp_path / "work"))
    assert res["ok"], res["markdown"]
    assert [s["name"] for s in res["reference"]["steps"]] == ["tiny_model", "data"]
    assert len(res["chaos"]["kills"]) == res["args"]["kills"] == 1
    assert len(res["chaos"]["attempts"]) == 2 and res["chaos"]["attempts"][-1]["rc"] == 0
    assert sum(row["kills"] for row in res["kills_table"]) == 1
    assert "--smoke" in res["command"] and measured(res["reference"]["wall_s"])
