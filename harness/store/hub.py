"""Publish run records to a Hugging Face Hub dataset repo, and pull them back verified.

Repo layout::

    README.md                    dataset card (harness.store.card): default config ``runs``, license, curves, runs table
    figures/learning_curves.png  the primary metric of every manifest, drawn at each publish
    runs.parquet                 one row per run in the repo
    runs/<run_id>/...            the whole run folder of the local store, record.json included

A publish is one commit (all runs or none), made on top of the head it read (``parent_commit``), so
a concurrent publish cannot silently drop rows from the runs index. Pulled runs are checked file by
file against their record's sha256 list before they enter the store; nothing pulled is executed or
unpickled (JSON and parquet only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import HubError
from harness.store import provenance
from harness.store.layout import METRICS_PARQUET, SYSTEM_PARQUET
from harness.store.layout import RECORD as RECORD_NAME
from harness.store.local import LocalStore
from harness.store.record import FINAL_STATUSES, Record
from harness.util.safefs import (
    MAX_CHECKSUM_BYTES,
    MAX_RECORD_BYTES,
    UnsafeFile,
    checksum_files,
    load_json,
    open_beneath,
    printable,
    relative_path_problem,
)

if TYPE_CHECKING:
    from harness.store.card import FigureMaker

REPO_TYPE = "dataset"
RUNS_INDEX = "runs.parquet"
NEW_INDEX = "new-runs.parquet"  # the index being committed, in the scratch folder
MAX_INDEX_BYTES = 1 << 30  # a larger runs.parquet on the repo is refused rather than downloaded
INDEX_BATCH_ROWS = 1 << 16  # rows of the repo's runs index in memory at a time
MAX_OPEN_UPLOADS = 1_000  # files uploaded from open descriptors; beyond, by path (checked the same way)
CARD_ROWS = 50  # runs listed in the dataset card (the newest; runs.parquet has them all)
MAX_PARAM_COLUMNS = 200  # param_<name> columns of the runs index (a repo's own index may hold any)
LOCAL_ONLY_FIELDS = ("pulled_from", "owner", "pending")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PublishResult:
    """What a publish did: the commit (None when nothing changed) and which runs it carried."""

    repo: str
    url: str
    commit: str | None
    published: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


# -- shared helpers -------------------------------------------------------------------------------


def check_repo_id(repo: str) -> str:
    """``org/name`` or a HubError saying what a repo id looks like."""
    if not REPO_ID.match(repo):
        raise HubError(f"{repo!r} is not a Hub repo id: write org/name")
    return repo


def parse_run_spec(spec: str) -> tuple[str, str | None]:
    """``org/name`` or ``org/name/<run_id>`` -> (repo id, run id or None)."""
    parts = spec.strip("/").split("/")
    if len(parts) == 3 and RUN_ID.match(parts[2]):
        return check_repo_id("/".join(parts[:2])), parts[2]
    if len(parts) == 2:
        return check_repo_id(spec.strip("/")), None
    raise HubError(f"{spec!r}: write org/name or org/name/<run_id>")


def _api(endpoint: str | None, token: str | None):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


@contextlib.contextmanager
def hub_errors(repo: str, endpoint: str, kind: str = REPO_TYPE) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into one-line HubErrors (never echoing a token),
    with the client's retries said in one line rather than one per attempt."""
    try:
        with one_line_retries(endpoint):
            yield
    except Exception as exc:
        message = _hub_error_message(exc, repo, endpoint, kind)
        if message is None:
            raise
        raise HubError(message) from None


def _hub_error_message(exc: BaseException, repo: str, endpoint: str, kind: str = REPO_TYPE) -> str | None:
    """The one line for an exception of the client or the network; None for any other. A wrapper
    that the client raises around the real failure (``RuntimeError: Error while uploading …`` from
    its upload threads) is read through to its cause."""
    import httpx2
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    for _ in range(8):  # a chain of causes is short; a loop of them must not hang
        if isinstance(exc, RepositoryNotFoundError):
            return f"{endpoint}: no {kind} repo {repo} (or it is private and your token cannot read it)"
        if isinstance(exc, RevisionNotFoundError):
            return f"{endpoint}: {repo} has no such revision"
        if isinstance(exc, RemoteEntryNotFoundError):
            return f"{endpoint}: {repo}: a file is missing on the Hub ({_first_line(exc)})"
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                return (
                    f"{endpoint} refused the token for {repo} (401): "
                    "set HF_TOKEN or run `hf auth login` with a write token"
                )
            if status == 412:
                return f"{repo} changed on the Hub while publishing; run the command again"
            return f"{endpoint}: {repo}: {_first_line(exc)}"
        if isinstance(exc, (httpx2.TransportError, OSError)):
            return (
                f"{endpoint}: connection failed for {repo} ({type(exc).__name__}: {_first_line(exc)}); "
                "nothing was changed, try again"
            )
        cause = exc.__cause__
        if not isinstance(exc, RuntimeError) or cause is None:
            return None
        exc = cause
    return None


# huggingface_hub's warnings as it retries a request or resumes a download, and its loggers
RETRY_NOTE = re.compile(
    r"^(?:'(.*)' thrown while requesting |(HTTP Error \d+) thrown while requesting |Error while downloading from \S+: )(.*)",
    re.DOTALL,
)
RETRYING_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.file_download")


class _RetryNotes(logging.Filter):
    """Lets the first of huggingface_hub's retry warnings through as one line, drops the rest."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        failed = RETRY_NOTE.match(message)
        if failed is None:
            return not message.startswith(("Retrying in ", "Rate limited."))
        if self.said:
            return False
        self.said = True
        reason = _first_line(RuntimeError(next(group for group in failed.groups() if group)))
        record.msg, record.args = f"{self.endpoint}: {reason}; retrying (a few times, for up to a minute)", None
        return True


@contextlib.contextmanager
def one_line_retries(endpoint: str) -> Iterator[None]:
    """While the block runs, the client's retries of failed requests print one line, not two per try."""
    loggers = [logging.getLogger(name) for name in RETRYING_LOGGERS]
    notes = _RetryNotes(endpoint)
    for logger in loggers:
        logger.addFilter(notes)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notes)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _git_blob_oid_file(folder: Path, relative: str) -> str:
    fd = open_beneath(folder, relative)
    try:
        size = os.fstat(fd).st_size
        digest = hashlib.sha1(b"blob %d\0" % size)
        offset = 0
        while offset < size:
            block = os.pread(fd, min(1 << 20, size - offset), offset)
            if not block:
                break
            digest.update(block)
            offset += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def published_record_bytes(record: Mapping[str, Any]) -> bytes:
    """record.json as published: without the fields that only describe this machine's copy."""
    public = {k: v for k, v in record.items() if k not in LOCAL_ONLY_FIELDS}
    return (json.dumps(public, indent=2, sort_keys=True, default=str) + "\n").encode()


def _same_content(remote: Any, sha256: str, git_oid: str) -> bool:
    """Whether a remote RepoFile holds these bytes (LFS files by sha256, regular ones by git oid)."""
    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256
    return remote.blob_id == git_oid


# -- publish --------------------------------------------------------------------------------------


@dataclass
class _IndexOutcome:
    """What was written to the new runs index: its row count, the newest rows and some names."""

    rows: int = 0
    tail: list[dict[str, Any]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


def _conform_index_batch(batch: pa.RecordBatch | pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """A batch of a runs index as ``schema`` (missing columns null); HubError when the columns it
    has cannot be read as such."""
    columns = []
    for name, kind in zip(schema.names, schema.types):
        index = batch.schema.get_field_index(name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, kind))
            continue
        try:
            columns.append(batch.column(index).cast(kind))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise HubError(
                f"{source}: column {printable(name)!r} of {RUNS_INDEX} is not {kind}; "
                "fix or remove the repo's runs index"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _index_schema(existing: pq.ParquetFile | None, new_rows: pa.Table) -> pa.Schema:
    """The new index's columns: the card's base columns, then every ``param_<name>`` column of the
    old index or the new rows (a param whose types disagree becomes text)."""
    from harness.store.card import BASE_COLUMNS, PARAM_PREFIX

    params: dict[str, pa.DataType] = {}
    sources = [new_rows.schema] + ([existing.schema_arrow] if existing is not None else [])
    for schema in sources:
        for item in schema:
            if not item.name.startswith(PARAM_PREFIX) or len(params) >= MAX_PARAM_COLUMNS:
                continue
            known = params.get(item.name)
            params[item.name] = item.type if known is None or known == item.type else pa.string()
    return pa.schema(list(BASE_COLUMNS) + [pa.field(name, kind) for name, kind in sorted(params.items())])


def write_runs_index(
    existing: Path | None, records: Sequence[Mapping[str, Any]], target: Path, source: str = RUNS_INDEX
) -> _IndexOutcome:
    """Write ``target``: the rows of the ``existing`` runs index (minus the runs being published),
    then one row per record. The old index is streamed in batches, never loaded whole."""
    import collections

    import pyarrow.compute as pc

    from harness.store.card import index_row, runs_table

    new_ids = pa.array(sorted({r["run_id"] for r in records}), pa.string())
    new_rows = runs_table([index_row(r) for r in records])
    outcome = _IndexOutcome()
    tail: collections.deque[dict[str, Any]] = collections.deque(maxlen=CARD_ROWS)

    def note(table: pa.Table) -> None:
        outcome.rows += table.num_rows
        tail.extend(table.slice(max(0, table.num_rows - CARD_ROWS)).to_pylist())
        if len(outcome.names) < 20:
            outcome.names.update(str(n) for n in pc.unique(table.column("name")).to_pylist()[:20])

    try:
        handle = pq.ParquetFile(existing) if existing is not None else None
    except (pa.ArrowInvalid, OSError) as exc:
        raise HubError(
            f"{source}: the repo's {RUNS_INDEX} is not a readable parquet file ({_first_line(exc)}); fix or remove it"
        ) from None
    schema = _index_schema(handle, new_rows)
    with pq.ParquetWriter(target, schema) as writer:
        if handle is not None:
            try:
                for batch in handle.iter_batches(batch_size=INDEX_BATCH_ROWS):
                    table = _conform_index_batch(batch, schema, source)
                    table = table.filter(
                        pc.invert(pc.fill_null(pc.is_in(table.column("run_id"), value_set=new_ids), False))
                    )
                    if table.num_rows:
                        writer.write_table(table)
                        note(table)
            except (pa.ArrowInvalid, OSError) as exc:
                raise HubError(
                    f"{source}: the repo's {RUNS_INDEX} is not a readable parquet file ({_first_line(exc)}); "
                    "fix or remove it"
                ) from None
        table = _conform_index_batch(new_rows, schema, "the runs being published")
        writer.write_table(table)
        note(table)
    outcome.tail = list(tail)
    return outcome


def _scan_for_token(paths: list[tuple[Path, str]], blobs: list[bytes], token: str) -> None:
    needle = token.encode()
    for blob in blobs:
        if needle in blob:
            raise HubError("refusing to publish: a generated file contains your Hub token")
    for folder, relative in paths:
        fd = open_beneath(folder, relative)
        try:
            tail, offset = b"", 0
            while block := os.pread(fd, 1 << 20, offset):
                offset += len(block)
                if needle in tail + block:
                    raise HubError(f"refusing to publish: {relative} contains your Hub token; remove it from the run")
                tail = block[-len(needle) :]
        finally:
            os.close(fd)


def publish(  # noqa: PLR0913 — publish's options, each a `harness publish` option passed through
    run_ids: list[str],
    repo: str,
    private: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    store: LocalStore | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    figure: FigureMaker | None = None,
    sign_key: Path | None = None,
) -> PublishResult:
    """Publish runs of the local store to the dataset repo ``repo`` in one commit.

    The commit also carries the runs index, the dataset card (``license`` and ``pretty_name`` go
    into its metadata) and, with ``figure`` (``harness.analysis.repo_figure.learning_curves``), the
    learning-curve figure, regenerated over every run of the repo.

    With ``sign_key`` (an ed25519 private key in PEM), each published record carries its signed
    provenance (harness.store.provenance) as ``provenance``.

    Runs already on the repo with the same checksums are left alone; when all are, no commit is made
    (``PublishResult.commit`` is None). The token comes from ``token``, ``HF_TOKEN`` or the
    huggingface_hub login, and is never logged or written.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, get_token

    check_repo_id(repo)
    if not run_ids:
        raise HubError("name at least one run id to publish")
    signer = provenance.load_signer(sign_key) if sign_key is not None else None
    store = store or LocalStore()
    records = _publishable_records(store, run_ids)
    if signer is not None:
        records = [cast(Record, {**r, "provenance": provenance.sign_record(r, signer)}) for r in records]

    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = _api(endpoint, token)
    with hub_errors(repo, api.endpoint), contextlib.ExitStack() as open_files:
        repo_url = api.create_repo(repo, repo_type=REPO_TYPE, private=private, exist_ok=True)
        head = api.repo_info(repo, repo_type=REPO_TYPE).sha
        remote = {
            entry.path: entry
            for entry in api.list_repo_tree(repo, repo_type=REPO_TYPE, revision=head, recursive=True)
            if hasattr(entry, "blob_id")
        }

        operations: list[Any] = []
        opened: list[str] = []
        changed, unchanged = [], []
        upload_paths: list[tuple[Path, str]] = []
        generated: list[bytes] = []
        for record in records:
            run_id = record["run_id"]
            folder = store.run_dir(run_id)
            prefix = f"runs/{run_id}/"
            record_bytes = published_record_bytes(record)
            wanted = {prefix + RECORD_NAME}
            same = _same_content(
                remote.get(prefix + RECORD_NAME), hashlib.sha256(record_bytes).hexdigest(), _git_blob_oid(record_bytes)
            )
            run_ops: list[Any] = [CommitOperationAdd(prefix + RECORD_NAME, record_bytes)]
            differing: list[str] = []
            for relative, sha256 in sorted(record["files"].items()):
                wanted.add(prefix + relative)
                if not _same_content(remote.get(prefix + relative), sha256, _git_blob_oid_file(folder, relative)):
                    differing.append(relative)
                run_ops.append(_upload_operation(prefix + relative, folder, relative, sha256, open_files, opened))
                upload_paths.append((folder, relative))
            stale = [p for p in remote if p.startswith(prefix) and p not in wanted]
            if prefix + RECORD_NAME in remote and (differing or stale):
                what = f"{differing[0]} differs" if differing else f"{stale[0][len(prefix) :]} is not in this run"
                raise HubError(
                    f"run {run_id} is already on {repo} with different files ({what}); not replacing it. "
                    f"Re-run it with `harness run --rerun` (a new run id) and publish that, or publish to another repo"
                )
            same = same and not differing
            if same and not stale:
                unchanged.append(run_id)
                continue
            changed.append(run_id)
            generated.append(record_bytes)
            operations += run_ops + [CommitOperationDelete(p) for p in stale]

        if not changed:
            return PublishResult(repo, str(repo_url), None, [], unchanged)

        with tempfile.TemporaryDirectory(prefix="harness-index-") as scratch:
            remote_repo = _RemoteRepo(api, repo, head, remote, token, Path(scratch))
            page_operations, page_files = _repo_page(remote_repo, records, store, figure, license, pretty_name)
            generated += page_files
            _scan_for_token(upload_paths + [(Path(scratch), NEW_INDEX)], generated, token)
            info = api.create_commit(
                repo,
                repo_type=REPO_TYPE,
                operations=operations + page_operations,
                commit_message=f"Publish {len(changed)} run(s): {', '.join(changed)}",
                parent_commit=head,
            )
    return PublishResult(repo, str(repo_url), info.oid, changed, unchanged)


def _publishable_records(store: LocalStore, run_ids: list[str]) -> list[Record]:
    """The records of ``run_ids`` (each once); HubError for a run that a pull would refuse, that has
    not finished, or whose files no longer match its record."""
    records = []
    for run_id in dict.fromkeys(run_ids):
        if not RUN_ID.match(run_id):
            raise HubError(
                f"{printable(run_id)!r} is not a run id that a pull would accept (letters, digits, '.', '_', '-')"
            )
        record = store.load(run_id)
        if record.get("status") == "imported":
            source = record.get("imported_from") or {}
            raise HubError(
                f"run {run_id} was imported from {source.get('repo')}: it is that publisher's run, not this "
                f"harness's; publish a reproduction of it instead (`harness reproduce {record.get('name')}`)"
            )
        _check_publishable_paths(run_id, record)
        if record.get("status") not in FINAL_STATUSES:
            raise HubError(f"run {run_id} is {record.get('status')!r}: only finished runs can be published")
        problems = store.verify(run_id)
        if problems:
            raise HubError(f"run {run_id} does not match its record ({'; '.join(problems[:3])}): not publishing it")
        records.append(record)
    return records


@dataclass
class _RemoteRepo:
    """The repo being published to, at the commit the publish started from."""

    api: Any
    repo: str
    head: str
    files: dict[str, Any]  # path -> tree entry
    token: str
    scratch: Path

    def download(self, path: str) -> Path:
        """``path`` of the repo at ``head``, into the scratch folder."""
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                self.repo,
                path,
                repo_type=REPO_TYPE,
                revision=self.head,
                endpoint=self.api.endpoint,
                token=self.token,
                local_dir=self.scratch,
            )
        )


def _repo_page(
    remote: _RemoteRepo,
    records: list[Record],
    store: LocalStore,
    figure: FigureMaker | None,
    license: str | None,
    pretty_name: str | None,
) -> tuple[list[Any], list[bytes]]:
    """The commit operations of the repo's page (runs index, dataset card, figure) over every run
    of the repo with ``records`` added, and the generated bytes (to scan for the token)."""
    from huggingface_hub import CommitOperationAdd

    from harness.store import card as repo_card

    index_path: Path | None = None
    if RUNS_INDEX in remote.files:
        size = getattr(remote.files[RUNS_INDEX], "size", 0) or 0
        if size > MAX_INDEX_BYTES:
            raise HubError(
                f"{remote.repo}: its {RUNS_INDEX} is {size} bytes (more than {MAX_INDEX_BYTES}); not reading it"
            )
        index_path = remote.download(RUNS_INDEX)
    new_index = remote.scratch / NEW_INDEX
    index = write_runs_index(index_path, records, new_index, f"{remote.repo}@{remote.head[:12]}")
    rows = sorted(index.tail, key=lambda row: (str(row.get("started_at") or ""), str(row.get("run_id"))))
    run_dirs = {r["run_id"]: store.run_dir(r["run_id"]) for r in records}
    drawn_rows = rows[::-1][: repo_card.FIGURE_RUNS] if figure is not None else []
    for row in drawn_rows:  # the newest runs already on the Hub, for the figure
        remote_metrics = f"runs/{row['run_id']}/{METRICS_PARQUET}"
        if row["run_id"] not in run_dirs and remote_metrics in remote.files and RUN_ID.match(row["run_id"]):
            remote.download(remote_metrics)
            run_dirs[row["run_id"]] = remote.scratch / "runs" / row["run_id"]
    drawn = figure(run_dirs, rows, remote.scratch / "figure.png") if figure is not None else None
    figure_bytes = drawn.read_bytes() if drawn is not None else None
    has_system = any(SYSTEM_PARQUET in r["files"] for r in records) or any(
        p.endswith("/system.parquet") and p.startswith("runs/") for p in remote.files
    )
    card = repo_card.card_text(
        remote.repo,
        rows,
        has_system,
        repo_card.FIGURE_PATH if figure_bytes else None,
        license=license,
        pretty_name=pretty_name,
        total=index.rows,
    ).encode()
    operations = [CommitOperationAdd(RUNS_INDEX, str(new_index)), CommitOperationAdd("README.md", card)]
    if figure_bytes is None:
        return operations, [card]
    return operations + [CommitOperationAdd(repo_card.FIGURE_PATH, figure_bytes)], [card, figure_bytes]


def _upload_operation(
    path_in_repo: str, folder: Path, relative: str, sha256: str, open_files: contextlib.ExitStack, opened: list[str]
) -> Any:
    """The commit operation that uploads ``folder/relative``, from a descriptor opened without
    following links (the upload reads the file that was checked, whatever its name points at
    later); HubError when its bytes are no longer the ones the record lists."""
    from huggingface_hub import CommitOperationAdd

    if len(opened) >= MAX_OPEN_UPLOADS:
        operation = CommitOperationAdd(path_in_repo, str(folder / relative))
    else:
        handle = open_files.enter_context(os.fdopen(open_beneath(folder, relative), "rb"))
        opened.append(relative)
        operation = CommitOperationAdd(path_in_repo, handle)
    if operation.upload_info.sha256.hex() != sha256:
        raise HubError(f"{folder.name}: {relative} changed since the run was sealed; not publishing it")
    return operation


def _check_publishable_paths(run_id: str, record: Mapping[str, Any]) -> None:
    """Refuse a run with a file name that a pull would refuse (one line naming the file)."""
    files = record.get("files")
    if not isinstance(files, dict):
        raise HubError(f"run {run_id}: record.json has no file list; run `harness recover` or re-run it")
    for relative in files:
        problem = relative_path_problem(relative)
        if problem:
            raise HubError(
                f"run {run_id}: cannot publish {printable(str(relative))!r} ({problem}): a pull would refuse it; "
                "rename or remove that file in the run folder and re-run, or publish without it"
            )


# -- pull -----------------------------------------------------------------------------------------


def _safe_relative(path: str) -> bool:
    """Whether a repo path is one that both publish and pull accept."""
    return relative_path_problem(path) is None


def _verify_download(run_id: str, folder: Path) -> dict[str, Any]:
    """The run's record after checking every file of ``folder`` against it; HubError on any difference."""
    record_path = folder / RECORD_NAME
    try:
        record = load_json(record_path, MAX_RECORD_BYTES)
    except UnsafeFile as exc:
        raise HubError(f"run {run_id}: no usable record.json in the download ({exc.reason})") from None
    except ValueError:
        raise HubError(f"run {run_id}: record.json is not valid JSON") from None
    expected = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("run_id") != run_id or not isinstance(expected, dict):
        raise HubError(f"run {run_id}: record.json names run {record.get('run_id')!r} or lacks its file list")
    bad = [p for p in expected if not _safe_relative(p)]
    if bad:
        raise HubError(f"run {run_id}: record lists a path outside the run folder: {bad[0]!r}")
    actual, skipped = checksum_files(folder, exclude=frozenset({RECORD_NAME}))
    if skipped:
        raise HubError(f"run {run_id} failed verification, not pulled: {skipped[0].path}: {skipped[0].reason}")
    problems = [f"missing {p}" for p in sorted(set(expected) - set(actual))]
    problems += [f"extra {p}" for p in sorted(set(actual) - set(expected))]
    problems += [f"checksum mismatch {p}" for p in sorted(set(expected) & set(actual)) if expected[p] != actual[p]]
    if problems:
        raise HubError(f"run {run_id} failed verification, not pulled: {'; '.join(problems[:5])}")
    return record


def pull(
    spec: str,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    store: LocalStore | None = None,
    trust_key: Path | None = None,
) -> list[str]:
    """Download ``org/name`` (every run) or ``org/name/<run_id>`` into the local store, verified.

    Every run is checked against the sha256 list of its record.json; a missing, extra, altered,
    symlinked or escaping file refuses the whole pull and nothing enters the store. With
    ``trust_key`` (an ed25519 public key in PEM), every run must also carry provenance signed by
    that key whose subjects are its record and files. Each pulled record gains ``pulled_from:
    {repo, revision (commit sha), endpoint}``. Returns the run ids.
    """
    from huggingface_hub import snapshot_download

    trusted = provenance.load_public_key(trust_key) if trust_key is not None else None
    repo, only_run = parse_run_spec(spec)
    store = store or LocalStore()
    api = _api(endpoint, token)
    with hub_errors(repo, api.endpoint):
        commit = api.repo_info(repo, repo_type=REPO_TYPE, revision=revision).sha
        entries = [
            entry
            for entry in api.list_repo_tree(repo, repo_type=REPO_TYPE, revision=commit, recursive=True)
            if hasattr(entry, "blob_id")
        ]
        paths = [entry.path for entry in entries]
        too_large = [e.path for e in entries if (getattr(e, "size", 0) or 0) > MAX_CHECKSUM_BYTES]
        if too_large:
            raise HubError(
                f"{repo}@{commit[:12]}: {printable(too_large[0])} is larger than {MAX_CHECKSUM_BYTES} bytes; not pulling it"
            )
        unsafe = [p for p in paths if not _safe_relative(p)]
        if unsafe:
            raise HubError(
                f"{repo}@{commit[:12]}: refusing a repo with an unusable path {printable(unsafe[0])!r} "
                f"({relative_path_problem(unsafe[0])})"
            )
        available = sorted(
            {
                p.split("/")[1]
                for p in paths
                if p.startswith("runs/") and p.endswith("/" + RECORD_NAME) and p.count("/") == 2
            }
        )
        if only_run is not None and only_run not in available:
            known = ", ".join(available[:10]) or "none"
            raise HubError(f"{repo}@{commit[:12]} has no run {only_run!r} (runs: {known})")
        run_ids = [only_run] if only_run else available
        if not run_ids:
            raise HubError(f"{repo}@{commit[:12]} holds no runs")
        bad_ids = [r for r in run_ids if not RUN_ID.match(r)]
        if bad_ids:
            raise HubError(f"{repo}: invalid run id {bad_ids[0]!r}")

        store.runs_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=store.root))
        try:
            snapshot_download(
                repo,
                repo_type=REPO_TYPE,
                revision=commit,
                allow_patterns=[f"runs/{run_id}/*" for run_id in run_ids],
                local_dir=staging / "download",
                endpoint=api.endpoint,
                token=token,
            )
            return _move_into_store(run_ids, staging / "download" / "runs", store, repo, commit, api.endpoint, trusted)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_into_store(
    run_ids: list[str], downloaded: Path, store: LocalStore, repo: str, commit: str, endpoint: str, trusted: Any
) -> list[str]:
    verified = {run_id: _verify_download(run_id, downloaded / run_id) for run_id in run_ids}
    if trusted is not None:
        for record in verified.values():
            provenance.verify_record(record, trusted)
    for run_id, record in verified.items():
        if store.exists(run_id):
            local = store.load(run_id)
            if local.get("files") != record["files"] or store.verify(run_id):
                raise HubError(f"run {run_id} is already in {store.root} with different content; remove it first")
    pulled = []
    for run_id, record in verified.items():
        if store.exists(run_id):
            pulled.append(run_id)
            continue
        record["pulled_from"] = {"repo": repo, "revision": commit, "endpoint": endpoint}
        with open(downloaded / run_id / RECORD_NAME, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        os.replace(downloaded / run_id, store.run_dir(run_id))
        store.note_finished(run_id)  # a cold run index then reads it from the journal, like the store's own
        pulled.append(run_id)
    return pulled
