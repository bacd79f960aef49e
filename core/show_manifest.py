"""`python -m core.show_manifest STAGE_DIR`: print a finished stage's outputs and metrics, readably."""

from __future__ import annotations

import json
import sys

from core.artifacts import require_manifest


def main(stage_dir: str) -> None:
    manifest = require_manifest(stage_dir, "show_manifest")
    print(f"stage {manifest.stage} in {stage_dir} (config {manifest.config_hash})")
    for name, out in manifest.outputs.items():
        rows = f"{out.rows} rows" if out.rows is not None else f"{out.bytes} bytes"
        print(f"  {name:<10} {out.path:<24} {rows}")
    print(json.dumps(manifest.metrics, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m core.show_manifest STAGE_DIR")
    main(sys.argv[1])
