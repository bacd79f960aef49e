"""Hub upload (core/push_to_hub.py): offline it fails at the door, before training; online (here with
huggingface_hub's create_repo and upload_folder replaced in-process, nothing leaves the machine) a finished
stage uploads exactly its serving directory, manifest and config, once."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from core.artifacts import read_manifest
from core.config import CONF_DIR, compose, to_typed
from core.push_to_hub import PushError, PushToHubConfig, files_to_push, push
from tests.conftest import offline_env, sft_overrides

REPO = CONF_DIR.parent


class FakeHub:
    """create_repo and upload_folder as the Hub would take them: every call recorded, each uploaded file's
    sha256 read while the staging folder exists."""

    def __init__(self) -> None:
        self.repos: list[tuple[str, bool]] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id: str, *, private: bool, exist_ok: bool) -> str:
        self.repos.append((repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(
        self, *, repo_id: str, folder_path: str, revision: str | None, commit_message: str
    ) -> str:
        root = Path(folder_path)
        files = {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }
        self.uploads.append(
            {"repo_id": repo_id, "revision": revision, "files": files, "message": commit_message}
        )
        return f"https://huggingface.co/{repo_id}/commit/abc"


@pytest.fixture
def online(monkeypatch) -> FakeHub:
    import huggingface_hub
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "create_repo", hub.create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", hub.upload_folder)
    return hub


def sft(tmp_path, tiny_model, sft_data, *overrides: str):
    from train_sft.config import SFTStageConfig

    base = [*sft_overrides(tmp_path, tiny_model, sft_data), "sft.max_steps=2", "peft=full"]
    return to_typed(compose("train_sft", [*base, *overrides]), SFTStageConfig)


def test_offline_a_push_fails_before_training_and_before_the_pipeline_starts(tmp_path, tiny_model, sft_data):
    from train_sft import stage

    cfg = sft(tmp_path, tiny_model, sft_data, "push_to_hub.repo_id=me/tiny-sft")
    with pytest.raises(
        PushError, match=r"needs the Hugging Face Hub, but this run is offline \(HF_HUB_OFFLINE=1"
    ):
        stage.run(cfg)
    assert not (tmp_path / "round_0" / "sft").exists()  # nothing trained, nothing written
    with pytest.raises(PushError, match="must be <user or org>/<name>"):
        stage.run(sft(tmp_path, tiny_model, sft_data, "push_to_hub.repo_id=tiny-sft"))

    from pipeline.run import compose_all, plan
    from tests.test_pipeline import pipeline_cfg

    over = [f"run_dir={tmp_path}/run", "grpo.push_to_hub.repo_id=me/tiny-grpo"]
    with pytest.raises(
        ValueError, match=r"pipeline step round_1/grpo .*push_to_hub\.repo_id=me/tiny-grpo needs"
    ):
        compose_all(plan(pipeline_cfg(*over)), pipeline_cfg(*over))


def test_without_a_token_a_push_fails_at_the_door(tmp_path, tiny_model, sft_data, online, monkeypatch):
    import huggingface_hub

    from train_sft import stage

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="needs a Hugging Face token with write access"):
        stage.run(sft(tmp_path, tiny_model, sft_data, "push_to_hub.repo_id=me/tiny-sft"))


@pytest.mark.slow
def test_a_trained_stage_uploads_its_serving_dir_manifest_and_config_once(
    tmp_path, tiny_model, sft_data, online
):
    from train_sft import stage

    cfg = sft(tmp_path, tiny_model, sft_data, "push_to_hub.repo_id=me/tiny-sft", "push_to_hub.revision=r1")
    stage.run(cfg)
    out = tmp_path / "round_0" / "sft"
    manifest = read_manifest(out)
    model_files = {
        p.removeprefix("model/"): o.sha256 for p, o in manifest.outputs.items() if p.startswith("model/")
    }
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(model_files)
    assert online.repos == [("me/tiny-sft", True)]
    (upload,) = online.uploads
    assert (upload["repo_id"], upload["revision"]) == ("me/tiny-sft", "r1")
    sha = {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in ("manifest.json", "config.yaml")
    }
    assert upload["files"] == {**model_files, **sha}  # exactly the serving dir at the root, manifest, config

    stage.run(cfg)  # finished and pushed: nothing again
    assert len(online.uploads) == 1
    (out / "hub.json").unlink()  # as after an upload that failed: the rerun only pushes
    mtime = (out / "manifest.json").stat().st_mtime_ns
    stage.run(cfg)
    assert len(online.uploads) == 2 and online.uploads[1]["files"] == upload["files"]
    assert (out / "manifest.json").stat().st_mtime_ns == mtime  # not trained again


def test_only_a_finished_unmodified_stage_is_pushed(tmp_path, two_process_sft, online):
    import shutil

    stage_dir = tmp_path / "sft"
    shutil.copytree(two_process_sft, stage_dir)
    files = files_to_push(stage_dir)
    assert {"model.safetensors", "config.json", "manifest.json", "config.yaml"} <= set(files)
    assert not any(name.startswith(("model/", "adapter/")) for name in files)  # the serving dir at the root
    (stage_dir / "model" / "config.json").write_text("{}")
    with pytest.raises(PushError, match=r"config\.json: changed since the stage finished"):
        push(stage_dir, PushToHubConfig("me/x"))
    (stage_dir / "manifest.json").unlink()
    with pytest.raises(PushError, match=r"no manifest\.json: not a finished stage"):
        push(stage_dir, PushToHubConfig("me/x"))
    assert online.uploads == []


def test_the_command_line_offline_says_what_to_change(tmp_path, two_process_sft):
    cmd = [sys.executable, "-m", "core.push_to_hub", str(two_process_sft), "me/tiny-sft"]
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "push_to_hub: " in done.stderr and "this run is offline (HF_HUB_OFFLINE=1" in done.stderr
    assert "Traceback" not in done.stderr
