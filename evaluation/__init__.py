"""Evaluation of a model: pass@1, maj@k, best-of-N on held-out prompts, and standard benchmarks.

- stage.py: the `evaluate` stage (`python -m evaluation`, conf/evaluate.yaml), its run function.
- benchmarks.py: the test sets (data/benchmarks/, one's own JSONL, reasoning-gym generators) and their golds.
- config.py: `EvaluateConfig`, `BenchmarkConfig`.

The package is `evaluation`, not `evaluate`: `evaluate` is Hugging Face's metrics library (not a dependency
here, but often installed next to transformers), and with both importable `import evaluate` would mean
whichever comes first on sys.path. The stage keeps its name `evaluate` (conf/evaluate.yaml, core.stages,
the pipeline's steps).
"""
