"""The test Hub speaks the protocol of the installed huggingface_hub client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from tests.conftest import HUB_TOKEN

TOKEN = HUB_TOKEN
REPO = "org/data"


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=TOKEN)


def test_module_entry_point_serves_and_prints_its_url(tmp_path):
    repo_root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hubserver", "--root", str(tmp_path / "hub"), "--port", "0", "--token", TOKEN],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert HfApi(endpoint=url, token=TOKEN).whoami()["name"] == "tester"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_create_commit_tree_and_downloads(api, hub, tmp_path):
    api.create_repo(REPO, repo_type="dataset")
    assert api.create_repo(REPO, repo_type="dataset", exist_ok=True).repo_id == REPO
    payload = os.urandom(4096)
    first = api.create_commit(
        REPO,
        repo_type="dataset",
        commit_message="add",
        operations=[
            CommitOperationAdd("notes/a.txt", b"hello\n"),
            CommitOperationAdd("data/blob.parquet", payload),
        ],
    )

    tree = {e.path: e for e in api.list_repo_tree(REPO, repo_type="dataset", recursive=True)}
    assert set(tree) == {"notes", "data", "notes/a.txt", "data/blob.parquet"}
    assert tree["data/blob.parquet"].lfs.size == 4096 and tree["notes/a.txt"].lfs is None
    top = [e.path for e in api.list_repo_tree(REPO, repo_type="dataset")]
    assert top == ["data", "notes"]
    assert sorted(api.list_repo_files(REPO, repo_type="dataset")) == ["data/blob.parquet", "notes/a.txt"]

    second = api.create_commit(
        REPO,
        repo_type="dataset",
        commit_message="drop notes",
        operations=[CommitOperationDelete("notes/")],
        parent_commit=first.oid,
    )
    assert api.list_repo_files(REPO, repo_type="dataset") == ["data/blob.parquet"]
    assert [c.commit_id for c in api.list_repo_commits(REPO, repo_type="dataset")][:2] == [second.oid, first.oid]

    # An older commit stays readable by its sha, with its own files.
    old = hf_hub_download(
        REPO, "notes/a.txt", repo_type="dataset", revision=first.oid, endpoint=hub.url, cache_dir=tmp_path / "cache"
    )
    assert Path(old).read_bytes() == b"hello\n"
    folder = snapshot_download(REPO, repo_type="dataset", endpoint=hub.url, local_dir=tmp_path / "snap", token=TOKEN)
    assert (Path(folder) / "data/blob.parquet").read_bytes() == payload
    assert api.dataset_info(REPO, revision=first.oid).sha == first.oid


def test_resolve_headers_head_and_ranges(api, hub):
    api.create_repo(REPO, repo_type="dataset")
    payload = bytes(range(256)) * 8
    commit = api.create_commit(
        REPO,
        repo_type="dataset",
        commit_message="add",
        operations=[CommitOperationAdd("x.bin", payload), CommitOperationAdd("r.txt", b"abc")],
    )
    url = f"{hub.url}/datasets/{REPO}/resolve/main/x.bin"

    head = httpx2.head(url)
    assert head.status_code == 200 and head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["X-Linked-Size"] == str(len(payload)) and head.headers["Content-Length"] == str(len(payload))
    info = api.get_paths_info(REPO, ["x.bin"], repo_type="dataset")[0]
    assert head.headers["X-Linked-Etag"] == f'"{info.lfs.sha256}"'
    ranged = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == payload[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(payload)}"
    regular = httpx2.head(f"{hub.url}/datasets/{REPO}/resolve/{commit.oid}/r.txt")
    assert regular.headers["ETag"] == f'"{api.get_paths_info(REPO, ["r.txt"], repo_type="dataset")[0].blob_id}"'

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.txt", repo_type="dataset", endpoint=hub.url, token=TOKEN)
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="f" * 40)
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/absent")


def test_stale_parent_commit_is_refused(api):
    api.create_repo(REPO, repo_type="dataset")
    base = api.dataset_info(REPO).sha
    api.create_commit(REPO, repo_type="dataset", commit_message="a", operations=[CommitOperationAdd("a", b"1")])
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_commit(
            REPO,
            repo_type="dataset",
            commit_message="b",
            parent_commit=base,
            operations=[CommitOperationAdd("b", b"2")],
        )
    assert raised.value.response.status_code == 412
    assert api.list_repo_files(REPO, repo_type="dataset") == ["a"]


def test_tokens_and_private_repos(api, hub):
    with pytest.raises(HfHubHTTPError) as raised:
        HfApi(endpoint=hub.url, token="hf_wrong").create_repo(REPO, repo_type="dataset")
    assert raised.value.response.status_code == 401
    assert raised.value.response.json() == {"error": "Invalid credentials in Authorization header"}
    assert "Invalid credentials" in str(raised.value)

    api.create_repo("org/secret", repo_type="dataset", private=True)
    assert api.dataset_info("org/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).dataset_info("org/secret")


def test_dropped_commit_changes_nothing(api, hub):
    api.create_repo(REPO, repo_type="dataset")
    hub.faults.drop_commits = 1
    with pytest.raises(httpx2.TransportError):
        api.create_commit(REPO, repo_type="dataset", commit_message="x", operations=[CommitOperationAdd("a", b"1")])
    assert api.list_repo_files(REPO, repo_type="dataset") == []
    api.create_commit(REPO, repo_type="dataset", commit_message="x", operations=[CommitOperationAdd("a", b"1")])
    assert api.list_repo_files(REPO, repo_type="dataset") == ["a"]
