"""Images by digest through a real registry (Debian's docker-registry on 127.0.0.1, started per
test): push, pull by digest, a missing digest, a registry that is down, htpasswd auth with
credentials from the environment or the Docker configuration (never stored), and push -> publish ->
pull -> reproduce with the published image, no build."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from harness.images.registry import (
    Registry,
    RegistryError,
    credentials,
    is_registry_ref,
    parse_registry,
    push_image,
    registry_host,
    repository_and_tag,
)
from harness.store.local import LocalStore
from tests.conftest import noop_project
from tests.registryserver import REGISTRY_PASSWORD, REGISTRY_USER, auth_registry, free_port, registry, tiny_image

__all__ = ["auth_registry", "registry"]  # fixtures

DIGEST = "sha256:" + "ab" * 32


def test_parse_registry_and_refs():
    assert parse_registry("127.0.0.1:5000") == Registry("127.0.0.1:5000")
    assert parse_registry("http://127.0.0.1:5000/lab/rl/") == Registry("127.0.0.1:5000", "lab/rl")
    assert str(parse_registry("registry.example.org/lab")) == "registry.example.org/lab"
    for bad in ("", "noport", "127.0.0.1:5000/Upper", "a b:1"):
        with pytest.raises(RegistryError, match="--registry"):
            parse_registry(bad)
    assert registry_host(f"127.0.0.1:5000/x/y@{DIGEST}") == "127.0.0.1:5000"
    assert registry_host(f"library/python@{DIGEST}") is None and registry_host(DIGEST) is None
    assert is_registry_ref(f"localhost:5000/x@{DIGEST}") and not is_registry_ref("127.0.0.1:5000/x:tag")
    assert repository_and_tag("harness/noop:abc", "f") == ("harness/noop", "abc")
    assert repository_and_tag(f"127.0.0.1:5000/lab/harness/noop@{DIGEST}", "f") == ("lab/harness/noop", "f")


def test_credentials_from_environment_then_docker_config(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_REGISTRY_USER", raising=False)
    monkeypatch.delenv("HARNESS_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert credentials("127.0.0.1:5000") is None
    auth = base64.b64encode(b"alice:pa:ss").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    assert credentials("127.0.0.1:5000") == ("alice", "pa:ss")
    assert credentials("127.0.0.1:5001") is None
    monkeypatch.setenv("HARNESS_REGISTRY_USER", "bob")
    monkeypatch.setenv("HARNESS_REGISTRY_PASSWORD", "pw")
    assert credentials("127.0.0.1:5000") == ("bob", "pw")
    (tmp_path / "config.json").write_text("{not json")
    monkeypatch.delenv("HARNESS_REGISTRY_USER")
    with pytest.raises(RegistryError, match=r"config\.json"):
        credentials("127.0.0.1:5000")


def test_push_needs_a_registry(cli, store_home, monkeypatch):
    monkeypatch.delenv("HARNESS_REGISTRY", raising=False)
    result = cli("push", "manifests/noop.yaml")
    assert result.returncode == 2 and "HARNESS_REGISTRY" in result.stderr and "Traceback" not in result.stderr
    result = cli("push", "manifests/noop.yaml", "--registry", "not a registry")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def _ref_manifest(project: Path, ref: str) -> Path:
    manifest = project / "manifests" / "by-digest.yaml"
    manifest.write_text(
        "apiVersion: harness/v1\nname: by-digest\n"
        f"image: {{ref: {ref}}}\n"
        "command: [cat, /hello.txt]\nseeds: [0]\n"
        "hardware: {cpus: 1, memory: 64MiB, timeout: 1m}\n"
    )
    return manifest


def _forget(client, *refs: str) -> None:  # type: ignore[no-untyped-def]
    for ref in refs:
        try:
            client.images.remove(ref, force=True)
        except Exception:  # noqa: BLE001 — best-effort cleanup
            pass


def test_pull_by_digest_missing_digest_and_registry_down(docker_engine, registry, tmp_path, cli, store_home):
    tag = f"harness-test/tiny-{uuid.uuid4().hex[:8]}:t"
    image_id = tiny_image(docker_engine, tag)
    ref = push_image(docker_engine, image_id, Registry(registry.address, "lab"), tag.split(":")[0], "t")
    assert ref.startswith(f"{registry.address}/lab/harness-test/tiny-") and "@sha256:" in ref
    _forget(docker_engine, tag, ref, image_id)
    project = noop_project(tmp_path / "project")
    try:
        built = cli("build", str(_ref_manifest(project, ref)), "--quiet")
        assert built.returncode == 0, built.stderr
        assert image_id in built.stdout  # the same image id, pulled by digest
        assert docker_engine.images.get(ref).id == image_id

        missing = ref.split("@")[0] + "@sha256:" + "0" * 64
        result = cli("build", str(_ref_manifest(project, missing)), "--quiet")
        assert result.returncode == 2, result.stderr
        assert "does not have this digest" in result.stderr and result.stderr.count("\n") == 1

        down = f"127.0.0.1:{free_port()}/lab/tiny@sha256:" + "1" * 64
        result = cli("build", str(_ref_manifest(project, down)), "--quiet")
        assert result.returncode == 2 and "unreachable" in result.stderr and result.stderr.count("\n") == 1

        result = cli("push", "manifests/noop.yaml", "--registry", f"127.0.0.1:{free_port()}")
        assert result.returncode == 2 and "unreachable" in result.stderr and "Traceback" not in result.stderr
    finally:
        _forget(docker_engine, ref, image_id)


def test_auth_registry_credentials_and_no_password_stored(
    docker_engine, auth_registry, tmp_path, cli, store_home, monkeypatch
):
    for name in ("HARNESS_REGISTRY_USER", "HARNESS_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    empty_config = tmp_path / "no-docker-config"
    empty_config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty_config))
    ran = cli("run", "manifests/noop.yaml", "--smoke", "--quiet")
    assert ran.returncode == 0, ran.stderr
    (record,) = LocalStore(store_home).records()
    run_id = record["run_id"]

    refused = cli("push", run_id, "--registry", auth_registry.address)
    assert refused.returncode == 2 and "refused the push" in refused.stderr, refused.stderr
    doctor = cli("doctor", env={"HARNESS_REGISTRY": auth_registry.address})
    assert "needed, none configured" in doctor.stdout

    env = {"HARNESS_REGISTRY_USER": REGISTRY_USER, "HARNESS_REGISTRY_PASSWORD": REGISTRY_PASSWORD}
    pushed = cli("push", run_id[:-4], "--registry", f"{auth_registry.address}/lab", "--json", env=env)  # a prefix
    assert pushed.returncode == 0, pushed.stderr
    registry_ref = LocalStore(store_home).load(run_id)["image"]["registry_ref"]
    assert registry_ref.startswith(f"{auth_registry.address}/lab/harness/noop@sha256:")
    assert json.loads(pushed.stdout) == {
        "registry_ref": registry_ref,
        "image_id": record["image"]["id"],
        "run_id": run_id,
    }
    assert LocalStore(store_home).verify(run_id) == []  # record.json is outside the checksums
    doctor = cli("doctor", env={"HARNESS_REGISTRY": auth_registry.address, **env})
    assert f"ok (user {REGISTRY_USER})" in doctor.stdout

    # a pull by digest with the credentials of the Docker configuration
    tag = f"harness-test/tiny-{uuid.uuid4().hex[:8]}:t"
    image_id = tiny_image(docker_engine, tag)
    with monkeypatch.context() as scoped:
        scoped.setenv("HARNESS_REGISTRY_USER", REGISTRY_USER)
        scoped.setenv("HARNESS_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
        ref = push_image(docker_engine, image_id, Registry(auth_registry.address), tag.split(":")[0], "t")
    _forget(docker_engine, tag, ref, image_id)
    project = noop_project(tmp_path / "project")
    manifest = str(_ref_manifest(project, ref))
    try:
        anonymous = cli("build", manifest, "--quiet")
        assert anonymous.returncode == 2 and "refused the pull" in anonymous.stderr, anonymous.stderr
        docker_config = tmp_path / "docker-config"
        docker_config.mkdir()
        auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {auth_registry.address: {"auth": auth}}}))
        pulled = cli("build", manifest, "--quiet", env={"DOCKER_CONFIG": str(docker_config)})
        assert pulled.returncode == 0, pulled.stderr
        assert image_id in pulled.stdout
    finally:
        _forget(docker_engine, ref, image_id)

    # the password is in no file the harness wrote (store, records, logs), nor in any output
    secret = REGISTRY_PASSWORD.encode()
    leaks = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file() and not path.is_relative_to(tmp_path / "docker-config") and secret in path.read_bytes()
    ]
    assert leaks == []
    for output in (refused, pushed, anonymous, pulled, doctor):
        assert REGISTRY_PASSWORD not in output.stdout + output.stderr


@pytest.mark.slow
def test_push_publish_pull_reproduce_runs_the_registry_image(docker_engine, base_image, registry, hub, tmp_path, cli):
    from harness.runtime.engine import engine_image_id

    # a recipe of this test's own (the noop recipe plus one file), so its image can be removed
    project = noop_project(tmp_path / "project")
    (project / "images" / "noop" / "workload" / "variant.txt").write_text(uuid.uuid4().hex)
    manifest = project / "manifests" / "noop.yaml"
    manifest.write_text(Path("manifests/noop.yaml").read_text())
    origin, fresh = {"HARNESS_HOME": str(tmp_path / "origin")}, {"HARNESS_HOME": str(tmp_path / "fresh")}
    ran = cli("run", str(manifest), "--smoke", "--quiet", env=origin, cwd=project)
    assert ran.returncode == 0, ran.stderr
    (original,) = LocalStore(tmp_path / "origin").records()
    run_id, image = original["run_id"], original["image"]

    pushed = cli("push", run_id, "--registry", f"{registry.address}/lab", env=origin, cwd=project)
    assert pushed.returncode == 0, pushed.stderr
    registry_ref = LocalStore(tmp_path / "origin").load(run_id)["image"]["registry_ref"]
    assert registry_ref.startswith(f"{registry.address}/lab/harness/noop@sha256:")
    _forget(docker_engine, image["tag"], registry_ref, image["id"])
    assert engine_image_id(image["tag"]) is None

    published = cli("publish", run_id, "--repo", "lab/registry-runs", env=origin, cwd=project)
    assert published.returncode == 0, published.stderr
    tree = hub.storage.commit(_repo_ref(), hub.storage.resolve(_repo_ref(), "main"))["tree"]
    assert f"runs/{run_id}/record.json" in tree
    card = hub.storage.blob_path(tree["README.md"]["sha256"]).read_text()
    assert registry_ref in card  # the dataset card names the image to reproduce with
    try:
        reproduced = cli(
            "reproduce", f"lab/registry-runs/{run_id}", "--out", str(tmp_path / "verdict"), env=fresh, cwd=project
        )
        assert reproduced.returncode == 0, reproduced.stdout[-2000:] + reproduced.stderr[-2000:]
        assert "verdict: identical" in reproduced.stdout
        assert f"the published image {registry_ref}" in reproduced.stdout and "not rebuilt" in reproduced.stdout
        store = LocalStore(tmp_path / "fresh")
        assert store.load(run_id)["image"]["registry_ref"] == registry_ref  # carried by publish and pull
        (reproduction,) = [r for r in store.records() if r.get("reproduces") == run_id]
        assert reproduction["image"]["id"] == image["id"] and reproduction["image"]["source"] == "registry"
        assert reproduction["image"]["content_hash"] is None and reproduction["reproduction_verdict"] == "identical"
        assert engine_image_id(image["tag"]) is None  # nothing was built
        verdict = json.loads((tmp_path / "verdict" / "verdict.json").read_text())
        assert verdict["image"] == {
            "source": "registry",
            "ref": registry_ref,
            "id": image["id"],
            "published_id": image["id"],
            "same_image": True,
            "image_note": f"the published image ({image['id'][:19]})",
        }

        rebuilt = cli("reproduce", run_id, "--rebuild", "--out", str(tmp_path / "rebuilt"), env=fresh, cwd=project)
        assert rebuilt.returncode == 0, rebuilt.stdout[-2000:] + rebuilt.stderr[-2000:]
        assert "rebuilt to the published digest" in rebuilt.stdout and "verdict: identical" in rebuilt.stdout
        assert engine_image_id(image["tag"]) is not None
    finally:
        _forget(docker_engine, image["tag"], registry_ref, image["id"])


def _repo_ref():  # type: ignore[no-untyped-def]
    from tests.hubserver import RepoRef

    return RepoRef("dataset", "lab/registry-runs")
