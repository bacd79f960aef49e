"""What every bench/ script shares: the `--smoke` switch and where results go.

`--smoke` only changes the defaults of size arguments (rows, steps, prompts, ...) before the command line
is read, so an argument given explicitly still wins and the smoke run goes through exactly the code of the
real benchmark; tests/test_bench.py runs every script this way so that none of them can rot unnoticed. A
smoke run writes its results to a temporary folder unless `--out` says where, so it never overwrites the
measured results under bench/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, smoke_defaults: dict[str, Any]
) -> argparse.Namespace:
    """Parse `argv`, with `smoke_defaults` replacing the parser's defaults when `--smoke` is given."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, same code path: runs end to end in seconds (CI); results go to a temp dir "
        "unless --out is given. Smoke sizes: "
        + ", ".join(f"{k.replace('_', '-')}={v}" for k, v in smoke_defaults.items()),
    )
    parser.add_argument("--out", default=None, help="results JSON (default: bench/results/<name>.json)")
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke_defaults)
    return parser.parse_args(argv)


def results_path(args: argparse.Namespace, name: str) -> Path:
    """--out, else bench/results/<name>.json, else (a smoke run) a fresh temporary folder's <name>.json."""
    if args.out:
        return Path(args.out)
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="bench_smoke_")) / f"{name}.json"
    return RESULTS_DIR / f"{name}.json"
