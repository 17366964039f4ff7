"""Signed provenance of a run: an in-toto Statement v1 with a SLSA Provenance v1 predicate, in a
DSSE envelope signed with a local ed25519 key.

The statement's subjects are ``record.json`` (its published bytes without the envelope, so every
field of the record is covered) and every file the record lists, each by sha256. Its build
definition names the manifest, the lockfile, the recipe's content hash, the image id and the
registry digest; its run details name the harness and its version, the host, the start and the
end. ``publish --sign KEY`` puts the envelope into the published record as ``provenance``;
``pull``/``reproduce --trust KEY.pub`` check the signature and that the subjects are the files.

The envelope is signed offline with securesystemslib (the DSSE and key-id conventions that in-toto
tools share). The online alternative, keyless Sigstore (``sigstore sign`` with an OIDC identity),
needs the internet and is not done here.

Everything read back (the record and its envelope) comes from a Hub repo and is hostile: sizes
and types are checked before anything is decoded, and every refusal is one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.util.safefs import UnsafeFile, printable, read_bounded

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:harness-repro:run:v1"
BUILDER_ID = "urn:harness-repro:harness"
FIELD = "provenance"  # record.json's field that holds the envelope
MAX_KEY_BYTES = 16 << 10
MAX_SIGNATURES = 16
MAX_PAYLOAD_BYTES = 16 << 20
# the record fields that describe one machine's copy (not signed, not published)
UNSIGNED_FIELDS = frozenset({FIELD, "pulled_from", "owner"})


class ProvenanceError(HarnessError):
    """A key that cannot be used, or a record whose provenance does not verify."""


def signed_record_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes of a record that its statement's ``record.json`` subject digests: the published
    form without the envelope and without the fields that only describe a local copy."""
    public = {k: v for k, v in record.items() if k not in UNSIGNED_FIELDS}
    return (json.dumps(public, indent=2, sort_keys=True, default=str) + "\n").encode()


def _hex(digest: Any) -> str | None:
    """``sha256:<hex>`` or ``<hex>`` as bare hex; None for anything else."""
    if not isinstance(digest, str):
        return None
    value = digest.removeprefix("sha256:")
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


def _dependency(name: str, digest: Any, uri: Any = None) -> dict[str, Any] | None:
    hex_digest = _hex(digest)
    if hex_digest is None and not uri:
        return None
    item: dict[str, Any] = {"name": name}
    if uri:
        item["uri"] = str(uri)
    if hex_digest is not None:
        item["digest"] = {"sha256": hex_digest}
    return item


def statement(record: Mapping[str, Any]) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA Provenance v1 predicate) of a sealed run ``record``."""
    files = record.get("files")
    if not isinstance(files, dict):
        raise ProvenanceError(f"run {record.get('run_id')}: record.json has no file list; it cannot be signed")
    subjects = [{"name": "record.json", "digest": {"sha256": hashlib.sha256(signed_record_bytes(record)).hexdigest()}}]
    subjects += [{"name": path, "digest": {"sha256": sha256}} for path, sha256 in sorted(files.items())]
    image: Mapping[str, Any] = record.get("image") or {}
    version = str(record.get("harness_version"))
    registry_ref = image.get("registry_ref")
    registry_digest = registry_ref.rpartition("@")[2] if isinstance(registry_ref, str) else None
    dependencies = [
        _dependency("manifest.yaml", record.get("manifest_sha256")),
        _dependency("lockfile.txt", record.get("lockfile_sha256")),
        _dependency("recipe", image.get("content_hash")),
        _dependency("image", image.get("id"), image.get("ref")),
        _dependency("registry-image", registry_digest, registry_ref),
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "name": record.get("name"),
                    "command": record.get("command"),
                    "params": record.get("params"),
                    "seed": record.get("seed"),
                    "manifest": {"sha256": _hex(record.get("manifest_sha256"))},
                },
                "internalParameters": {
                    "runtime": record.get("runtime"),
                    "hardware": record.get("hardware"),
                    "host": record.get("host"),
                },
                "resolvedDependencies": [d for d in dependencies if d is not None],
            },
            "runDetails": {
                "builder": {"id": f"{BUILDER_ID}@{version}", "version": {"harness-repro": version}},
                "metadata": {
                    "invocationId": record.get("run_id"),
                    "startedOn": record.get("started_at"),
                    "finishedOn": record.get("ended_at"),
                },
            },
        },
    }


def _read_key(path: Path, what: str) -> bytes:
    try:
        return read_bounded(path, MAX_KEY_BYTES)
    except UnsafeFile as exc:
        raise ProvenanceError(f"{path}: cannot read the {what} ({exc.reason})") from None
    except OSError as exc:
        raise ProvenanceError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_signer(path: Path) -> Any:
    """A securesystemslib signer for the ed25519 private key in the PEM file ``path`` (as
    ``openssl genpkey -algorithm ed25519`` writes it); ProvenanceError naming the file otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey

    data = _read_key(path, "signing key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ProvenanceError(
            f"{path}: not an unencrypted PEM private key; make one with `openssl genpkey -algorithm ed25519 -out {path}`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvenanceError(f"{path}: the key is not ed25519; make one with `openssl genpkey -algorithm ed25519`")
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


def load_public_key(path: Path) -> Any:
    """The securesystemslib key for the ed25519 public key in the PEM file ``path`` (as
    ``openssl pkey -pubout`` writes it); ProvenanceError naming the file otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    data = _read_key(path, "public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ProvenanceError(
            f"{path}: not a PEM public key; write it with `openssl pkey -in KEY -pubout -out {path}`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProvenanceError(f"{path}: the public key is not ed25519")
    return SSlibKey.from_crypto(key)


def sign_record(record: Mapping[str, Any], signer: Any) -> dict[str, Any]:
    """The DSSE envelope (as JSON) of ``record``'s statement, signed by ``signer``. Deterministic:
    ed25519 signs the same statement to the same bytes, so signing again changes nothing."""
    from securesystemslib.dsse import Envelope

    payload = json.dumps(statement(record), sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(signer)
    result: dict[str, Any] = envelope.to_dict()
    return result


def _envelope(run_id: str, value: Any) -> Any:
    """The securesystemslib Envelope of a hostile ``provenance`` field; ProvenanceError if malformed."""
    from securesystemslib.dsse import Envelope

    if not isinstance(value, dict):
        raise ProvenanceError(
            f"run {run_id} is not signed (record.json has no provenance envelope); pull it without --trust "
            "to accept it unsigned"
        )
    payload, kind, signatures = value.get("payload"), value.get("payloadType"), value.get("signatures")
    if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        raise ProvenanceError(f"run {run_id}: its provenance envelope has no usable payload")
    if kind != PAYLOAD_TYPE:
        raise ProvenanceError(
            f"run {run_id}: its provenance payload type is {printable(str(kind))!r}, not {PAYLOAD_TYPE}"
        )
    if (
        not isinstance(signatures, list)
        or not 0 < len(signatures) <= MAX_SIGNATURES
        or not all(
            isinstance(s, dict) and isinstance(s.get("keyid"), str) and isinstance(s.get("sig"), str)
            for s in signatures
        )
    ):
        raise ProvenanceError(f"run {run_id}: its provenance envelope has no usable signature list")
    try:
        return Envelope.from_dict(
            {"payload": payload, "payloadType": kind, "signatures": [dict(s) for s in signatures]}
        )
    except Exception as exc:  # any decoding failure of hostile input is the same one-line refusal
        raise ProvenanceError(f"run {run_id}: its provenance envelope is malformed ({type(exc).__name__})") from None


def verify_record(record: Mapping[str, Any], key: Any) -> dict[str, Any]:
    """Check that ``record``'s provenance envelope is signed by ``key`` and that its statement's
    subjects are exactly this record and its files; returns the statement. ProvenanceError (one
    line naming the run and what failed) otherwise."""
    from securesystemslib.exceptions import VerificationError

    run_id = printable(str(record.get("run_id")))
    envelope = _envelope(run_id, record.get(FIELD))
    try:
        envelope.verify([key], 1)
    except VerificationError:
        raise ProvenanceError(
            f"run {run_id}: its provenance is not signed by the trusted key {key.keyid[:16]} "
            "(signed by another key, or the statement was altered); not accepting it"
        ) from None
    try:
        signed = json.loads(envelope.payload)
    except ValueError:
        raise ProvenanceError(f"run {run_id}: its signed provenance is not JSON") from None
    if (
        not isinstance(signed, dict)
        or signed.get("_type") != STATEMENT_TYPE
        or signed.get("predicateType") != PREDICATE_TYPE
    ):
        raise ProvenanceError(f"run {run_id}: its signed provenance is not an in-toto SLSA provenance statement")
    subjects = signed.get("subject")
    if not isinstance(subjects, list):
        raise ProvenanceError(f"run {run_id}: its signed provenance has no subject list")
    signed_digests: dict[str, Any] = {}
    for item in subjects:
        digest = item.get("digest") if isinstance(item, dict) else None
        if not isinstance(digest, dict) or not isinstance(item.get("name"), str):
            raise ProvenanceError(f"run {run_id}: its signed provenance has a malformed subject")
        signed_digests[item["name"]] = digest.get("sha256")
    files = record.get("files")
    actual = {"record.json": hashlib.sha256(signed_record_bytes(record)).hexdigest()}
    actual.update(files if isinstance(files, dict) else {})
    for name in sorted(set(signed_digests) | set(actual)):
        if name not in actual:
            raise ProvenanceError(f"run {run_id}: the signed provenance names {printable(name)!r}, which the run lacks")
        if name not in signed_digests:
            raise ProvenanceError(f"run {run_id}: {printable(name)} is not in the signed provenance; not accepting it")
        if signed_digests[name] != actual[name]:
            raise ProvenanceError(
                f"run {run_id}: {printable(name)} does not match its signed digest (altered after signing); not accepting it"
            )
    return signed
