"""The validated-manifest cache (harness.manifest_cache): a warm run loads its manifest without
pydantic, an edit is validated afresh, errors stay those of a full validation, and a damaged or
hostile cache entry is ignored with the run still correct."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.loaded_manifest import manifest_text
from harness.manifest import load_manifest as validate_in_full
from harness.manifest_cache import MAX_ENTRY_BYTES, cache_key, load_manifest
from harness.store.local import LocalStore
from tests.conftest import REPO, noop_variant


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty harness cache, as $HARNESS_CACHE (for this process and the CLI it starts)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(folder))
    return folder


def harness_cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The real CLI, and the top-level packages it imported (``python -X importtime``)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "harness", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    imported = {
        line.rpartition("|")[2].strip().split(".")[0] for line in result.stderr.splitlines() if "import time:" in line
    }
    messages = "\n".join(line for line in result.stderr.splitlines() if "import time:" not in line)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, messages), imported


def entries(cache: Path) -> list[Path]:
    folder = cache / "manifests"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def entry_path(cache: Path, manifest: str) -> Path:
    return cache / "manifests" / f"{cache_key(manifest_text(Path(manifest).read_bytes()))}.json"


# --- without the engine --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "manifests").glob("*.yaml")))
def test_a_cached_manifest_reads_as_the_validated_one(cache, name):
    path = REPO / "manifests" / name
    try:
        full = validate_in_full(path)
    except Exception:  # noqa: BLE001 — a manifest that needs what this host lacks is not the point here
        pytest.skip(f"{name} does not load here")
    cold = load_manifest(path)
    assert entry_path(cache, str(path)).is_file()
    warm = load_manifest(path)
    assert warm._model is None  # came from the cache: no pydantic model made
    assert warm.view == cold.view == full.view
    assert json.dumps(warm.view.dump) == json.dumps(full.view.dump)  # in the same order too
    assert warm.sha256 == full.sha256 and warm.text == full.text and warm.root == full.root
    assert warm.build_dir == full.build_dir and warm.lockfile == full.lockfile
    assert warm.manifest == full.manifest  # the model, rebuilt on demand, is the same


def test_the_cache_keeps_at_most_its_bound(cache, tmp_path, monkeypatch):
    import harness.manifest_cache as manifest_cache

    monkeypatch.setattr(manifest_cache, "MAX_ENTRIES", 3)
    manifest = Path(noop_variant(tmp_path / "project"))
    text = manifest.read_text()
    for index in range(5):
        manifest.write_text(text.replace("tags: [test]", f"tags: [test, t{index}]"))
        load_manifest(manifest)
    assert len(entries(cache)) == 3
    assert entry_path(cache, str(manifest)).is_file()  # the newest stays


# --- the real CLI on the real engine ------------------------------------------------------


def only_completed(home: Path) -> list[dict]:
    records = list(LocalStore(home).records())
    assert records and all(r["status"] == "completed" for r in records), [(r["run_id"], r["status"]) for r in records]
    return records


@pytest.mark.docker
def test_a_warm_run_loads_its_manifest_without_pydantic_or_yaml(noop_image, store_home, cache, tmp_path):
    manifest = noop_variant(tmp_path / "project")
    first, imported = harness_cli("run", manifest, "--param", "mode=noop", "--quiet")
    assert first.returncode == 0, first.stderr
    assert "pydantic" in imported and len(entries(cache)) == 1
    second, imported = harness_cli("run", manifest, "--param", "mode=noop", "--quiet", "--rerun")
    assert second.returncode == 0, second.stderr
    assert "pydantic" not in imported and "yaml" not in imported
    records = only_completed(store_home)
    assert len(records) == 2 and len({r["config_key"] for r in records}) == 1
    built, imported = harness_cli("build", manifest, "--quiet")
    assert built.returncode == 0, built.stderr
    assert "pydantic" not in imported


@pytest.mark.docker
def test_an_edited_manifest_is_validated_again(noop_image, store_home, cache, tmp_path):
    manifest = Path(noop_variant(tmp_path / "project"))
    assert harness_cli("run", str(manifest), "--param", "mode=noop", "--quiet")[0].returncode == 0
    manifest.write_text(manifest.read_text().replace("tags: [test]", "tags: [test, edited]"))
    result, imported = harness_cli("run", str(manifest), "--param", "mode=noop", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "pydantic" in imported and len(entries(cache)) == 2
    records = only_completed(store_home)
    assert sorted(r["tags"] for r in records) == [["test"], ["test", "edited"]]


def test_a_bad_edit_fails_as_without_a_cache(cache, tmp_path, monkeypatch):
    manifest = Path(noop_variant(tmp_path / "project"))
    good = manifest.read_text()
    load_manifest(manifest)  # the good version is cached
    assert len(entries(cache)) == 1
    manifest.write_text(good.replace("seeds: [0]", "seeds: [-1]"))
    cached, _ = harness_cli("run", str(manifest), "--quiet")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "other-cache"))
    uncached, _ = harness_cli("run", str(manifest), "--quiet")
    assert cached.returncode == uncached.returncode == 2
    assert cached.stderr == uncached.stderr
    lines = cached.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {manifest}:") and "seeds" in lines[0]


def test_a_lost_lockfile_is_found_on_a_cached_load(cache, tmp_path, monkeypatch):
    manifest = Path(noop_variant(tmp_path / "project"))
    load_manifest(manifest)
    (tmp_path / "project" / "lockfiles" / "noop.txt").unlink()
    cached, _ = harness_cli("build", str(manifest), "--quiet")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "other-cache"))
    uncached, _ = harness_cli("build", str(manifest), "--quiet")
    assert cached.returncode == uncached.returncode == 2
    assert cached.stderr == uncached.stderr and "image.lockfile" in cached.stderr
    assert len(cached.stderr.strip().splitlines()) == 1


def forged(entry: Path) -> dict:
    """A copy of a real entry whose command would fail the run: used only if the cache is trusted."""
    data = json.loads(entry.read_text())
    data["manifest"]["command"] = ["python", "-c", "raise SystemExit(3)"]
    return data


def hostile_symlink(path: Path, good: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(forged(good)))
    path.symlink_to(elsewhere)


def hostile_huge(path: Path, good: Path, tmp_path: Path) -> None:
    data = json.dumps(forged(good))
    path.write_text(data[:-1] + ", " + '"padding": "' + "x" * (MAX_ENTRY_BYTES + 1) + '"}')


def hostile_not_json(path: Path, good: Path, tmp_path: Path) -> None:
    path.write_bytes(b'{"format": "harness-manifest-cache/1", "key": \xff\xfe')


def hostile_wrong_shape(path: Path, good: Path, tmp_path: Path) -> None:
    path.write_text(json.dumps([json.loads(good.read_text())]))


def hostile_wrong_types(path: Path, good: Path, tmp_path: Path) -> None:
    data = forged(good)
    data["manifest"]["seeds"] = ["0"]
    data["manifest"]["hardware"]["gpus"] = True
    path.write_text(json.dumps(data))


def hostile_other_key(path: Path, good: Path, tmp_path: Path) -> None:
    data = forged(good)
    data["key"] = "0" * 64
    path.write_text(json.dumps(data))


def hostile_bad_lines(path: Path, good: Path, tmp_path: Path) -> None:
    data = forged(good)
    data["lines"] = {"image.build": "/etc/passwd"}
    path.write_text(json.dumps(data))


def hostile_directory(path: Path, good: Path, tmp_path: Path) -> None:
    path.mkdir()
    (path / "inside.json").write_text(good.read_text())


def hostile_fifo(path: Path, good: Path, tmp_path: Path) -> None:
    os.mkfifo(path)


HOSTILE = [
    hostile_symlink,
    hostile_huge,
    hostile_not_json,
    hostile_wrong_shape,
    hostile_wrong_types,
    hostile_other_key,
    hostile_bad_lines,
    hostile_directory,
    hostile_fifo,
]


@pytest.mark.parametrize("make", HOSTILE, ids=[f.__name__.removeprefix("hostile_") for f in HOSTILE])
def test_a_hostile_entry_is_ignored(cache, tmp_path, make):
    manifest = Path(noop_variant(tmp_path / "project"))
    load_manifest(manifest)
    entry = entry_path(cache, str(manifest))
    good = tmp_path / "good.json"
    good.write_bytes(entry.read_bytes())
    entry.unlink()
    make(entry, good, tmp_path)
    loaded = load_manifest(manifest)
    assert loaded._model is not None  # validated in full, not taken from the entry
    assert loaded.view == validate_in_full(manifest).view
    assert loaded.view.command[0] == "python" and "SystemExit" not in " ".join(loaded.view.command)
    if make is hostile_symlink:
        assert json.loads((tmp_path / "elsewhere.json").read_text())["manifest"]["command"][1] == "-c"  # untouched
    if make is not hostile_directory:  # a folder cannot be replaced by a file; the others are rewritten
        assert not entry.is_symlink() and json.loads(entry.read_text())["key"] == entry.stem
        assert load_manifest(manifest)._model is None


@pytest.mark.docker
@pytest.mark.parametrize("make", [hostile_symlink, hostile_wrong_types, hostile_directory], ids=lambda f: f.__name__)
def test_a_run_with_a_hostile_entry_is_correct(noop_image, store_home, cache, tmp_path, make):
    manifest = noop_variant(tmp_path / "project")
    load_manifest(manifest)
    entry = entry_path(cache, manifest)
    good = tmp_path / "good.json"
    good.write_bytes(entry.read_bytes())
    entry.unlink()
    make(entry, good, tmp_path)
    result, imported = harness_cli("run", manifest, "--param", "mode=noop", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "pydantic" in imported
    (record,) = only_completed(store_home)
    assert record["command"][:2] == ["python", "/workload/probe.py"]
