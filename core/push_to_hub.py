"""Upload a finished training stage to the Hugging Face Hub: its serving directory, manifest and config.

    push_to_hub: {repo_id: me/qwen2.5-1.5b-r1-sft, private: true, revision: null}   # any training stage
    python -m core.push_to_hub runs/x/round_0/sft me/qwen2.5-1.5b-r1-sft [--public] [--revision main]

What is uploaded, in one commit (`huggingface_hub.upload_folder` of a staging folder of hard links): the
stage's serving directory at the root of the repository (`model/`: safetensors, tokenizer, chat template,
generation config, train_config.yaml; a stage that kept only a LoRA adapter uploads `adapter/`), plus the
stage's `manifest.json` and resolved `config.yaml`, so the repository says what it was trained from and on.
Only a finished stage is uploaded: its manifest must list the serving directory's files, and every file
must still have the sha256 the manifest recorded (a model edited after training is refused).

The pipeline runs offline by default (HF_HUB_OFFLINE=1): a stage asked to push fails at its door, before it
trains, with what to change; so does a machine without a token (HF_TOKEN or `hf auth login`). A push that
fails after training (the network, the token's rights) leaves the trained stage finished; the same command
then only pushes (`hub.json` beside the manifest records what was uploaded, and where).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import help_field

log = logging.getLogger(__name__)

RECORD = "hub.json"
SERVING_DIRS = ("model", "adapter")  # the first one the manifest lists is uploaded
STAGE_FILES = ("manifest.json", "config.yaml")


class PushError(RuntimeError):
    """A push that cannot or must not happen: offline, no token, an unfinished or modified stage."""


@dataclass
class PushToHubConfig:
    """A training stage's `push_to_hub` section: null repo_id = no upload (the default)."""

    repo_id: str | None = help_field(
        None, help="Hub repository (user/name) to upload the finished model to; null = none.", hashed=False
    )
    private: bool = help_field(
        True, help="Create the repository private (when it does not exist).", hashed=False
    )
    revision: str | None = help_field(
        None, help="Branch to commit to; null = the default branch.", hashed=False
    )


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check(push: PushToHubConfig | None, where: str) -> None:
    """At a stage's door: a push that cannot happen fails now, before any training."""
    if push is None or push.repo_id is None:
        return
    if "/" not in push.repo_id:
        raise PushError(f"{where}: push_to_hub.repo_id={push.repo_id!r} must be <user or org>/<name>")
    if hub_offline():
        raise PushError(
            f"{where}: push_to_hub.repo_id={push.repo_id} needs the Hugging Face Hub, but this run is offline "
            "(HF_HUB_OFFLINE=1, the project's default). Run with HF_HUB_OFFLINE=0 to upload at the end of "
            "training, or leave push_to_hub.repo_id null and upload later: python -m core.push_to_hub <stage dir> "
            f"{push.repo_id}"
        )
    from huggingface_hub import get_token

    if get_token() is None:
        raise PushError(
            f"{where}: push_to_hub.repo_id={push.repo_id} needs a Hugging Face token with write access: set "
            "HF_TOKEN or run `hf auth login` first"
        )


def files_to_push(stage_dir: Path) -> dict[str, Path]:
    """{path in the repository: file}: the serving directory's files at the root, the manifest and config
    beside them; each checked against the manifest's sha256."""
    from core.artifacts import read_manifest, sha256_file

    manifest_path = stage_dir / "manifest.json"
    if not manifest_path.exists():
        raise PushError(f"{stage_dir}: no manifest.json: not a finished stage (train it first)")
    outputs = read_manifest(stage_dir).outputs
    recorded = {Path(o.path).as_posix(): o.sha256 for o in outputs.values()}
    serving = next((d for d in SERVING_DIRS if any(p.startswith(f"{d}/") for p in recorded)), None)
    if serving is None:
        raise PushError(f"{stage_dir}: its manifest lists no model/ or adapter/ files: nothing to serve")
    files: dict[str, Path] = {}
    for path, sha in sorted(recorded.items()):
        if not path.startswith(f"{serving}/"):
            continue
        file = stage_dir / path
        if not file.exists():
            raise PushError(f"{file}: listed in the manifest but missing")
        if sha is not None and sha256_file(file) != sha:
            raise PushError(f"{file}: changed since the stage finished (sha256 differs from its manifest)")
        files[path[len(serving) + 1 :]] = file
    for name in STAGE_FILES:
        if (stage_dir / name).exists():
            files[name] = stage_dir / name
    return files


def pushed(stage_dir: Path, push: PushToHubConfig) -> bool:
    """This stage's current manifest was already uploaded to this repository and revision."""
    record = stage_dir / RECORD
    if not record.exists():
        return False
    from core.artifacts import sha256_file

    done = json.loads(record.read_text())
    return (done.get("repo_id"), done.get("revision"), done.get("manifest_sha256")) == (
        push.repo_id,
        push.revision,
        sha256_file(stage_dir / "manifest.json"),
    )


def push(stage_dir: str | Path, push: PushToHubConfig) -> dict[str, Any]:
    """Upload the finished stage in `stage_dir` (see the module docstring) and record it in hub.json."""
    import huggingface_hub

    from core.artifacts import atomic_path, sha256_file

    stage_dir = Path(stage_dir)
    check(push, str(stage_dir))
    files = files_to_push(stage_dir)
    if pushed(stage_dir, push):
        log.info("%s is already on the Hub at %s: not uploaded again", stage_dir, push.repo_id)
        return json.loads((stage_dir / RECORD).read_text())
    huggingface_hub.create_repo(push.repo_id, private=push.private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="push-", dir=stage_dir.parent) as tmp:
        for name, file in files.items():
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, target)
            except OSError:
                shutil.copy2(file, target)
        info = huggingface_hub.upload_folder(
            repo_id=push.repo_id,
            folder_path=tmp,
            revision=push.revision,
            commit_message=f"Upload {stage_dir.name} (manifest sha256 {sha256_file(stage_dir / 'manifest.json')[:12]})",
        )
    record = {
        "repo_id": push.repo_id,
        "revision": push.revision,
        "private": push.private,
        "commit_url": str(getattr(info, "commit_url", info)),
        "files": sorted(files),
        "manifest_sha256": sha256_file(stage_dir / "manifest.json"),
    }
    with atomic_path(stage_dir / RECORD) as tmp_record:
        Path(tmp_record).write_text(json.dumps(record, indent=2) + "\n")
    log.info("pushed %d files of %s to %s (%s)", len(files), stage_dir, push.repo_id, record["commit_url"])
    return record


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.push_to_hub", description=__doc__.split("\n")[0])
    parser.add_argument("stage_dir", help="a finished training stage's directory (manifest.json in it)")
    parser.add_argument("repo_id", help="user/name on the Hub")
    parser.add_argument(
        "--public", action="store_true", help="create the repository public (default private)"
    )
    parser.add_argument("--revision", default=None, help="branch to commit to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        push(args.stage_dir, PushToHubConfig(args.repo_id, not args.public, args.revision))
    except PushError as e:
        sys.exit(f"push_to_hub: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
