"""Signed provenance (harness.store.provenance): publish --sign, pull/reproduce --trust against the
real test Hub, with keys made by openssl as a user makes them, and hostile envelopes."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from harness.store import provenance
from harness.store.hub import publish, pull
from harness.store.local import LocalStore
from tests.conftest import run_cli
from tests.hubserver import RepoRef
from tests.hubserver.runs import make_run

REPO = "lab/signed-results"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Two ed25519 key pairs (``a``, ``a.pub``, ``b``, ``b.pub``) and an RSA key, made by openssl."""
    folder = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("a", "b"):
        private, public = folder / f"{name}.pem", folder / f"{name}.pub"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True)
        subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
        paths[name], paths[f"{name}.pub"] = private, public
    paths["rsa"] = folder / "rsa.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(paths["rsa"])],
        check=True,
        capture_output=True,
    )
    return paths


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "origin"))
    return LocalStore(tmp_path / "origin")


def test_signed_publish_pulls_verified_and_resigning_changes_nothing(hub, store, keys, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    make_run(store, "toy-bbb", seed=2)
    first = publish(["toy-aaa", "toy-bbb"], REPO, endpoint=hub.url, sign_key=keys["a"])

    fresh = LocalStore(tmp_path / "fresh")
    assert pull(REPO, endpoint=hub.url, store=fresh, trust_key=keys["a.pub"]) == ["toy-aaa", "toy-bbb"]
    record = fresh.load("toy-aaa")
    statement = provenance.verify_record(record, provenance.load_public_key(keys["a.pub"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert {k: v for k, v in subjects.items() if k != "record.json"} == record["files"]
    predicate = statement["predicate"]
    dependencies = {d["name"]: d for d in predicate["buildDefinition"]["resolvedDependencies"]}
    assert dependencies["image"]["digest"] == {"sha256": "2" * 64}
    assert dependencies["recipe"]["digest"] == {"sha256": "3" * 64}
    assert dependencies["lockfile.txt"]["digest"] == {"sha256": "1" * 64}
    assert predicate["runDetails"]["builder"]["id"].startswith("urn:harness-repro:harness@")
    assert predicate["runDetails"]["metadata"]["startedOn"] == "2026-01-01T00:00:00Z"

    # ed25519 is deterministic: signing the same runs again is no change, so no commit
    again = publish(["toy-aaa", "toy-bbb"], REPO, endpoint=hub.url, sign_key=keys["a"])
    assert first.commit is not None and again.commit is None


def test_tampered_record_is_refused_with_trust(hub, store, keys, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    publish(["toy-aaa"], REPO, endpoint=hub.url, sign_key=keys["a"])
    path = "runs/toy-aaa/record.json"
    repo = RepoRef("dataset", REPO)
    entry = hub.storage.commit(repo, hub.storage.resolve(repo, "main"))["tree"][path]
    published = json.loads(hub.storage.blob_path(entry["sha256"]).read_bytes())
    published["metrics_summary"]["charts/episodic_return"]["last"] = 500.0  # a better result
    hub.storage.tamper(repo, path, json.dumps(published).encode())

    unchecked = LocalStore(tmp_path / "unchecked")
    assert pull(REPO, endpoint=hub.url, store=unchecked) == ["toy-aaa"]  # the file checksums cannot see it
    fresh = LocalStore(tmp_path / "fresh")
    with pytest.raises(provenance.ProvenanceError, match="record.json does not match its signed digest"):
        pull(REPO, endpoint=hub.url, store=fresh, trust_key=keys["a.pub"])
    assert not fresh.exists("toy-aaa")


def test_another_key_and_unsigned_runs_are_refused_in_one_line(hub, store, keys, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    make_run(store, "toy-bbb", seed=2)
    publish(["toy-aaa"], REPO, endpoint=hub.url, sign_key=keys["b"])
    home = {"HARNESS_HOME": str(tmp_path / "fresh")}

    done = run_cli("pull", REPO, "--endpoint", hub.url, "--trust", str(keys["a.pub"]), env=home, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: run toy-aaa: its provenance is not signed by the trusted key "
        f"{provenance.load_public_key(keys['a.pub']).keyid[:16]} (signed by another key, or the statement was "
        "altered); not accepting it"
    ]
    done = run_cli(
        "reproduce", f"{REPO}/toy-aaa", "--endpoint", hub.url, "--trust", str(keys["a.pub"]), env=home, timeout=120
    )
    assert done.returncode == 2 and "not signed by the trusted key" in done.stderr and "Traceback" not in done.stderr
    assert not LocalStore(tmp_path / "fresh").exists("toy-aaa")

    publish(["toy-bbb"], REPO, endpoint=hub.url)  # unsigned
    with pytest.raises(provenance.ProvenanceError, match="run toy-bbb is not signed"):
        pull(f"{REPO}/toy-bbb", endpoint=hub.url, store=LocalStore(tmp_path / "other"), trust_key=keys["b.pub"])


def test_a_valid_signature_of_other_files_is_refused(store, keys):
    """A genuine envelope moved onto another run, or one naming files the run lacks or lacking one
    it has: the signature verifies, the subjects do not."""
    signer = provenance.load_signer(keys["a"])
    trusted = provenance.load_public_key(keys["a.pub"])
    aaa, bbb = make_run(store, "toy-aaa", seed=1), make_run(store, "toy-bbb", seed=2)
    moved = {**bbb, "provenance": provenance.sign_record(aaa, signer)}
    with pytest.raises(provenance.ProvenanceError, match="logs/output.log does not match its signed digest"):
        provenance.verify_record(moved, trusted)

    more = {**aaa, "files": {**aaa["files"], "out/model.pt": "4" * 64}}
    with pytest.raises(provenance.ProvenanceError, match="names 'out/model.pt', which the run lacks"):
        provenance.verify_record({**aaa, "provenance": provenance.sign_record(more, signer)}, trusted)
    with pytest.raises(provenance.ProvenanceError, match="out/model.pt is not in the signed provenance"):
        provenance.verify_record({**more, "provenance": provenance.sign_record(aaa, signer)}, trusted)


def _signed_payload(payload: bytes, signer) -> dict:
    from securesystemslib.dsse import Envelope

    envelope = Envelope(payload, provenance.PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return envelope.to_dict()


def test_hostile_envelopes_are_one_line_refusals(store, keys):
    signer = provenance.load_signer(keys["a"])
    trusted = provenance.load_public_key(keys["a.pub"])
    record = make_run(store, "toy-aaa", seed=1)
    good = provenance.sign_record(record, signer)
    signature = good["signatures"][0]
    cases = {
        "no provenance envelope": None,
        "no usable payload": {**good, "payload": 7},
        "payload type": {**good, "payloadType": "text/x-shellscript\x1b[2J"},
        "no usable signature list": {**good, "signatures": [signature] * (provenance.MAX_SIGNATURES + 1)},
        "malformed": {**good, "payload": "%%% not base64 %%%"},
        "not signed by the trusted key": {
            **good,
            "signatures": [{**signature, "sig": base64.b64encode(b"x").decode()}],
        },
        "is not JSON": _signed_payload(b"\xff not json", signer),
        "not an in-toto SLSA": _signed_payload(b'{"_type": "https://in-toto.io/Statement/v0.1"}', signer),
        "malformed subject": _signed_payload(
            json.dumps(
                {"_type": provenance.STATEMENT_TYPE, "predicateType": provenance.PREDICATE_TYPE, "subject": [1]}
            ).encode(),
            signer,
        ),
    }
    for expected, envelope in cases.items():
        with pytest.raises(provenance.ProvenanceError, match=expected) as caught:
            provenance.verify_record({**record, "provenance": envelope}, trusted)
        assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_unusable_keys_exit_2_naming_the_file(store, keys, tmp_path):
    make_run(store, "toy-aaa", seed=1)
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hello\n")
    for key, message in (
        (not_a_key, "not an unencrypted PEM private key"),
        (keys["rsa"], "the key is not ed25519"),
        (keys["a.pub"], "not an unencrypted PEM private key"),
        (tmp_path / "missing.pem", "cannot read the signing key"),
    ):
        done = run_cli("publish", "toy-aaa", "--repo", REPO, "--sign", str(key), env={"HF_TOKEN": "x"}, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}: {message}"), lines
    done = run_cli("pull", REPO, "--trust", str(keys["a"]), timeout=60)
    assert done.returncode == 2 and "not a PEM public key" in done.stderr and "Traceback" not in done.stderr
