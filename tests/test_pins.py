"""Pinned Hub inputs: fetched on the host at their commit (data files only), mounted read-only
into the sandbox with the Hub offline, recorded; an unreachable Hub is one clear line."""

from __future__ import annotations

import json

import pytest

from harness.store.local import LocalStore
from tests.conftest import HUB_TOKEN, noop_variant

pytestmark = pytest.mark.docker
TOKEN = HUB_TOKEN


def test_pinned_model_is_fetched_and_mounted_read_only(noop_image, store_home, cli, tmp_path, hub):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("lab/tiny-model")
    files = {"config.json": b'{"n_layer": 2}', "model.safetensors": b"\0" * 1024, "pytorch_model.bin": b"pickle!"}
    commit = api.create_commit(
        "lab/tiny-model", [CommitOperationAdd(k, v) for k, v in files.items()], commit_message="tiny model"
    )
    revision = commit.oid
    api.upload_file(path_or_fileobj=b'{"n_layer": 3}', path_in_repo="config.json", repo_id="lab/tiny-model")
    manifest = noop_variant(tmp_path, extra=f"model: {{repo: lab/tiny-model, revision: {revision}}}\n")
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": TOKEN,
        "HARNESS_CACHE": str(tmp_path / "cache"),
    }
    result = cli("run", manifest, "--param", "mode=pins", env=env)
    assert result.returncode == 0, result.stderr
    record = next(LocalStore(store_home).records())
    assert record["pins"][0]["revision"] == revision
    assert "pytorch_model.bin" not in record["pins"][0]["files"]
    report = json.loads((store_home / "runs" / record["run_id"] / "out" / "pins.json").read_text())
    snapshot = f"models--lab--tiny-model/snapshots/{revision}/"
    assert snapshot + "config.json" in report["files"] and snapshot + "model.safetensors" in report["files"]
    assert not any(name.endswith(".bin") for name in report["files"])
    assert report["offline"] == "1" and report["cache_writable"] is False
    cached = tmp_path / "cache" / "hub" / snapshot / "config.json"
    assert json.loads(cached.read_text()) == {"n_layer": 2}  # the pinned commit, not the newer one
    # the token stays on the host
    assert "HF_TOKEN" not in report["env_keys"]
    for path in (store_home / "runs" / record["run_id"]).rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in result.stdout + result.stderr


def test_unreachable_hub_is_one_line_and_writes_nothing(noop_image, store_home, cli, tmp_path):
    manifest = noop_variant(tmp_path, extra="model: {repo: lab/absent, revision: " + "b" * 40 + "}\n")
    result = cli(
        "run",
        manifest,
        env={
            "HF_ENDPOINT": "http://127.0.0.1:9",
            "HF_HUB_DISABLE_XET": "1",
            "HARNESS_CACHE": str(tmp_path / "cache"),
            "HF_HUB_ETAG_TIMEOUT": "2",
        },
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "lab/absent" in result.stderr and "cannot fetch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not store_home.exists()
