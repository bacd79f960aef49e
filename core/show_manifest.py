"""`python -m core.show_manifest STAGE_DIR`: print a finished stage's outputs and metrics, readably."""

from __future__ import annotations

import json
import sys
from typing import Any

from core.artifacts import require_manifest


def _brief(value: Any) -> Any:
    """Long lists (loss curves) become a count, so the summary fits a terminal."""
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} points]"
    return value


def main(stage_dir: str) -> None:
    manifest = require_manifest(stage_dir, "show_manifest")
    print(f"stage {manifest.stage} in {stage_dir} (config {manifest.config_hash})")
    for out in manifest.outputs.values():
        rows = f"{out.rows} rows" if out.rows is not None else f"{out.bytes} bytes"
        print(f"  {out.path:<36} {rows}")
    for key, value in manifest.metrics.items():
        print(f"  {key}: {json.dumps(_brief(value))}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m core.show_manifest STAGE_DIR")
    main(sys.argv[1])
