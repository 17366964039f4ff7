"""The core commands: validate, schema, lock, image, build, run, ls, show, recover, doctor."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.commands.options import ca_bundle_option, console, json_option, ray_address_option, runtime_option
from harness.commands.output import emit_json, examples
from harness.commands.runids import RUN_ID
from harness.errors import HarnessError
from harness.util import terminal

if TYPE_CHECKING:
    from harness.store.record import Record


@click.command(
    epilog=examples("harness validate manifests/*.yaml", "harness validate --json manifests/dqn-cartpole.yaml")
)
@click.argument("manifests", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def validate(manifests: tuple[Path, ...], as_json: bool) -> None:
    """Check manifests: schema, pinning, and the files they point to."""
    from harness.errors import ManifestError
    from harness.manifest import expect_warnings, load_manifest

    problems: list[str] = []
    results: list[dict[str, Any]] = []
    for path in manifests:
        try:
            loaded = load_manifest(path)
            runs = loaded.manifest.sweep_size()
            results.append({"path": str(path), "ok": True, "name": loaded.manifest.name, "runs": runs, "problems": []})
            if not as_json:
                click.echo(f"{path}: ok ({loaded.manifest.name}, {runs} run{'s' if runs != 1 else ''})")
            for warning in expect_warnings(loaded):
                click.echo(warning, err=True)
        except ManifestError as exc:
            problems += exc.problems
            results.append({"path": str(path), "ok": False, "name": None, "runs": None, "problems": exc.problems})
    if as_json:
        emit_json(results)
        if problems:
            raise SystemExit(2)
        return
    if problems:
        raise ManifestError(problems)


@click.command(epilog=examples("harness schema > manifest.schema.json"))
def schema() -> None:
    """Print the JSON Schema of the manifest (for editors)."""
    from harness.manifest import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@click.command(epilog=examples("harness lock images/rl", "harness lock --check", "harness lock --check --json"))
@click.argument("image_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--check", is_flag=True, help="Exit 1 when a lockfile is missing, unusable or stale (for CI).")
@click.option("--upgrade", is_flag=True, help="Resolve afresh instead of keeping the existing lockfile's pins.")
@json_option
def lock(image_dirs: tuple[Path, ...], check: bool, upgrade: bool, as_json: bool) -> None:
    """pip-compile --generate-hashes each image's requirements.in into lockfiles/<name>.txt."""
    from harness.images.lock import (
        CompileProgress,
        compile_lockfile,
        lockfile_for,
        lockfile_is_current,
        stale_lockfiles,
    )

    if check:
        stale = stale_lockfiles(Path.cwd())
        if as_json:
            emit_json({"ok": not stale, "stale": stale})
        else:
            for line in stale:
                click.echo(f"stale: {line}", err=True)
            if not stale:
                click.echo("lockfiles are up to date")
        if stale:
            sys.exit(1)
        return
    if not image_dirs:
        raise HarnessError("harness lock: name an image folder (e.g. images/rl) or use --check")
    written = []
    for image_dir in image_dirs:
        if not (image_dir / "requirements.in").is_file():
            raise HarnessError(
                f"{image_dir}: no requirements.in (an image folder holds Dockerfile, requirements.in, workload/)"
            )
        if not upgrade and lockfile_is_current(image_dir):
            if not as_json:
                click.echo(
                    f"{lockfile_for(image_dir)} is up to date (made from this requirements.in; "
                    "--upgrade resolves afresh)"
                )
            written.append(str(lockfile_for(image_dir)))
            continue
        with terminal.status(f"locking {image_dir} (pip-compile)", stderr=as_json) as status:
            progress = CompileProgress(say=status.update)
            output = compile_lockfile(image_dir, upgrade=upgrade, progress=progress)
        written.append(str(output))
        click.echo(progress.summary(), err=as_json)
        if not as_json:
            click.echo(f"wrote {output}")
    if as_json:
        emit_json({"written": written})


@click.group(epilog=examples("harness image bootstrap"))
def image() -> None:
    """Base images."""


@image.command(
    "bootstrap",
    epilog=examples(
        "harness image bootstrap", "harness image bootstrap --force", "harness image bootstrap --suite bullseye"
    ),
)
@click.option("--name", help="image name [default: harness/base:<suite>]")
@click.option(
    "--suite",
    default="bookworm",
    show_default=True,
    help="Debian release: bookworm (Python 3.11), or bullseye (Python 3.9, for imported CleanRL runs)",
)
@click.option("--force", is_flag=True, help="Rebuild even when the image exists.")
@click.option(
    "--tarball",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the root file system here; import it instead of running mmdebstrap when it exists (CI caches it).",
)
def bootstrap(name: str | None, suite: str, force: bool, tarball: Path | None) -> None:
    """Make the base image from Debian packages (mmdebstrap), for hosts without a registry."""
    from harness.images.build import bootstrap_base

    name = name or f"harness/base:{suite}"
    with terminal.status(f"bootstrapping {name} from Debian {suite}") as shown:
        info = bootstrap_base(name, suite, force=force, log=shown.update, tarball=tarball)
    click.echo(f"{name}: {info.id} ({len(info.packages)} Debian packages){' (exists)' if info.cached else ''}")


@click.command(
    epilog=examples(
        "harness build manifests/dqn-cartpole.yaml",
        "harness build --force manifests/noop.yaml",
        "harness build --check manifests/noop.yaml",
    )
)
@click.argument("manifest", type=click.Path(path_type=Path))
@ca_bundle_option
@click.option("--force", is_flag=True, help="Build even when the content-addressed tag exists.")
@click.option(
    "--reproducible/--no-reproducible",
    default=None,
    help="Build bit-reproducibly (podman, timestamps clamped), or with Docker's builder; "
    "as image.reproducible in the manifest [default: the manifest's, else reproducible where podman is installed].",
)
@click.option(
    "--check",
    is_flag=True,
    help="Build reproducibly twice from scratch and compare the ids; exit 1 naming the layer and files that differ.",
)
@click.option("--quiet", is_flag=True)
@json_option
def build(
    manifest: Path,
    ca_bundle: Path | None,
    force: bool,
    reproducible: bool | None,
    check: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build (or find) the content-addressed image of a manifest."""
    from harness.images.build import build_image
    from harness.images.prepare import prepare_image
    from harness.manifest_cache import load_manifest
    from harness.run.plan import expand

    loaded = load_manifest(manifest)
    spec = expand(loaded)[0]
    checked: list[Any] = []
    if check and spec.loaded.build_dir is None:
        raise HarnessError(f"{manifest}: --check needs image.build (an image.ref is not built here)")
    if check and reproducible is False:
        raise HarnessError("--check builds with the reproducible builder: drop --no-reproducible")

    def make(log: Callable[[str], None]) -> Any:
        if check:
            assert spec.loaded.build_dir is not None
            return build_image(
                spec.loaded.build_dir,
                spec.loaded.lockfile,
                ca_bundle=ca_bundle,
                force=True,
                log=log,
                network=spec.loaded.view.image.network,
                check=checked.append,
            )
        return prepare_image(spec.loaded, ca_bundle, force, log=log, reproducible=reproducible)

    if quiet or as_json:
        info = make(lambda line: None)
    else:
        what = loaded.view.image.build or loaded.view.image.ref
        with terminal.status(f"{'checking' if check else 'building'} {what}", stderr=as_json) as shown:
            info = make(shown.update)
    result = checked[0] if checked else None
    if as_json:
        emit_json(
            {
                "tag": info.tag,
                "ref": info.ref,
                "id": info.id,
                "content_hash": info.content_hash,
                "cached": info.cached,
                "build_seconds": info.build_seconds,
                "builder": info.builder,
                **(
                    {}
                    if result is None
                    else {
                        "check": {
                            "reproducible": result.reproducible,
                            "ids": [result.first, result.second],
                            "differences": result.differences,
                        }
                    }
                ),
            }
        )
    else:
        state = "cached, no build" if info.cached else f"built in {info.build_seconds:.1f}s"
        click.echo(f"{info.tag or info.ref} {info.id} ({state})")
        if result is not None and result.reproducible:
            click.echo(f"reproducible: two builds from scratch gave {result.first}")
        elif result is not None:
            click.echo(f"NOT reproducible: two builds from scratch gave {result.first} and {result.second}")
            for line in result.differences:
                click.echo(f"  {line}")
    if result is not None and not result.reproducible:
        raise click.exceptions.Exit(1)


@click.command(
    epilog=examples(
        "harness run manifests/dqn-cartpole.yaml",
        "harness run manifests/noop.yaml --smoke --param seconds=2 --json",
        "harness run manifests/dqn-sweep.yaml --jobs 2",
    )
)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--seed", "seeds", type=int, multiple=True, help="Run these seeds instead of the manifest's.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a param.")
@click.option("--smoke", is_flag=True, help="Apply the manifest's smoke params (a quick run for CI).")
@runtime_option
@click.option("--backend", type=click.Choice(["local", "slurm", "ray"]), default="local", show_default=True)
@click.option("--jobs", type=int, help="At most this many runs at once.")
@click.option("--partition", help="Slurm partition.")
@click.option("--account", help="Slurm account.")
@ray_address_option
@click.option("--rerun", is_flag=True, help="Run again even when the store has a completed run of the same config.")
@click.option("--retry-failed", is_flag=True, help="Re-run failed, timed-out, OOM and interrupted runs.")
@click.option("--dry-run", is_flag=True, help="List what would run.")
@click.option("--yes", is_flag=True, help="Confirm a sweep of more than 10,000 runs.")
@ca_bundle_option
@click.option("--quiet", is_flag=True, help="Do not stream the job's output (progress is still shown).")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="When not on a terminal (or CI is set): one progress line every SECONDS "
    "[default: $HARNESS_PROGRESS_INTERVAL or 10].",
)
@click.option(
    "--require-limits",
    is_flag=True,
    help="Refuse to run where the sandbox cannot enforce the memory, CPU and pids limits "
    "(rootless Podman on cgroup v1); by default such a run goes on with a warning.",
)
@json_option
def run(  # noqa: PLR0913 — a Click command takes one parameter per option
    manifest: Path,
    seeds: tuple[int, ...],
    params: tuple[str, ...],
    smoke: bool,
    runtime: str,
    backend: str,
    jobs: int | None,
    partition: str | None,
    account: str | None,
    address: str | None,
    rerun: bool,
    retry_failed: bool,
    dry_run: bool,
    yes: bool,
    ca_bundle: Path | None,
    quiet: bool,
    progress_every: float | None,
    require_limits: bool,
    as_json: bool,
) -> None:
    """Run a manifest (all its seeds × sweep) into the local store.

    A single run shows its progress while it goes (elapsed, last step, primary metric, ETA when a
    param such as total_timesteps says how many steps): redrawn in place on a terminal, one plain
    line every --progress-every seconds in a pipe or when CI is set.
    """
    import os

    from harness.manifest_cache import load_manifest
    from harness.run.plan import expand, parse_overrides
    from harness.store.local import LocalStore

    if require_limits:
        # the environment carries it to every run of this process and to the Slurm tasks it submits
        os.environ["HARNESS_REQUIRE_LIMITS"] = "1"

    loaded = load_manifest(manifest)
    specs = expand(loaded, seeds=list(seeds) or None, overrides=parse_overrides(params, loaded), smoke=smoke)
    store = LocalStore()
    if len(specs) > 1 or backend != "local" or dry_run or retry_failed:
        from harness.backends import run_sweep

        outcome = run_sweep(
            specs,
            store=store,
            backend=backend,
            runtime=runtime,
            jobs=jobs,
            partition=partition,
            account=account,
            address=address,
            retry_failed=retry_failed,
            dry_run=dry_run,
            yes=yes,
            rerun=rerun,
            echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo,
        )
        if as_json:
            emit_json(_sweep_json(outcome))
        elif backend == "local" and not dry_run:
            for line in _seeds_summary(loaded.manifest, outcome, store):
                click.echo(line)
        sys.exit(outcome.exit_code)
    from harness.backends import plan_sweep

    spec = specs[0]
    # a single run that ended badly runs again without --retry-failed; a completed one needs --rerun
    completed = plan_sweep(specs, store, retry_failed=True, rerun=rerun).completed
    if completed:
        if as_json:
            emit_json(_run_json(store.load(completed[0]), store, skipped=True))
            return
        click.echo(
            f"{spec.run_id}: already completed with this manifest, params and seed (use --rerun to run it again)"
        )
        return
    with terminal.status(
        f"preparing {spec.name} seed {spec.seed}", prefix="building image: ", stderr=as_json
    ) as status:
        record = _execute_with_status(
            spec, store, runtime, ca_bundle, status, quiet, err=as_json, progress_every=progress_every
        )
    if as_json:
        emit_json(_run_json(record, store))
    else:
        _print_outcome(record, loaded.view.metrics.summary_last_n)
    sys.exit(0 if record["status"] == "completed" else 1)


def _seeds_summary(manifest: Any, outcome: Any, store: Any) -> list[str]:
    """The last lines of a multi-seed run of one configuration: the primary metric across its
    completed seeds, and the verdict against the manifest's expect.reference when it has one."""
    import statistics

    if manifest.sweep is not None:
        return []
    records = [store.load(run_id) for run_id in outcome.plan.completed] + list(outcome.records)
    done = [r for r in records if r.get("status") == "completed"]
    primary = manifest.metrics.primary
    values = [
        v
        for r in done
        for v in [_mapping(_mapping(r.get("metrics_summary")).get(primary)).get("mean_last_n")]
        if isinstance(v, (int, float))
    ]
    if not primary or not values:
        return []
    spread = f" ± {statistics.stdev(values):.4g} (sd)" if len(values) > 1 else ""
    lines = [
        f"{primary} (mean of the last {manifest.metrics.summary_last_n} points): "
        f"{statistics.fmean(values):.6g}{spread} over {len(values)} seed{'s' if len(values) != 1 else ''}"
    ]
    reference = manifest.expect.reference
    if reference is not None and len(done) > 1 and not any(r.get("smoke") for r in done):
        from harness.reproduce.reference import reference_verdict

        try:
            verdict = reference_verdict(
                [store.run_dir(r["run_id"]) for r in done], reference.model_dump(), manifest.expect
            )
        except HarnessError as exc:
            return [*lines, f"no verdict against the reference: {exc}"]
        lines.append(verdict.summary())
        lines += [f"note: {note}" for note in verdict.notes]
    return lines


def _run_json(record: Mapping[str, Any], store: Any, skipped: bool = False) -> dict[str, Any]:
    """``harness run --json`` of one run (docs/cli-json.md)."""
    primary = record.get("primary_metric")
    summary = (record.get("metrics_summary") or {}).get(primary or "") or {}
    return {
        "run_id": record["run_id"],
        "name": record.get("name"),
        "status": record.get("status"),
        "skipped": skipped,
        "seed": record.get("seed"),
        "params": record.get("params"),
        "duration_s": record.get("duration_s"),
        "exit_code": record.get("exit_code"),
        "detail": record.get("detail") or "",
        "run_dir": str(store.run_dir(record["run_id"])),
        "primary_metric": primary,
        "primary_last": summary.get("last"),
        "primary_mean_last_n": summary.get("mean_last_n"),
    }


def _sweep_json(outcome: Any) -> dict[str, Any]:
    """``harness run --json`` of a sweep (docs/cli-json.md)."""
    plan = outcome.plan
    return {
        "sweep_id": plan.sweep_id,
        "backend": outcome.backend,
        "dry_run": outcome.dry_run,
        "ok": outcome.ok,
        "total": len(plan.specs),
        "to_run": [spec.run_id for spec in plan.to_run],
        "already_completed": plan.completed,
        "failed_earlier": plan.failed,
        "still_running": plan.running,
        "runs": [{k: r.get(k) for k in ("run_id", "status", "seed", "params", "duration_s")} for r in outcome.records],
        "slurm_job_ids": outcome.slurm_job_ids,
    }


def _execute_with_status(
    spec: Any,
    store: Any,
    runtime: str,
    ca_bundle: Path | None,
    status: Any,
    quiet: bool,
    err: bool = False,
    progress_every: float | None = None,
) -> Record:
    """Run one spec with live progress (harness.run.progress) below the job's streamed output."""
    from harness.run.progress import LiveRun
    from harness.run.runner import execute

    def announce(record: dict) -> None:
        status.stop()
        click.echo(f"{record['run_id']}: running ({record['runtime']}) -> {store.run_dir(record['run_id'])}", err=err)

    live = LiveRun(spec, store, None, interval=progress_every, announce=announce, err=err)
    try:
        return execute(
            spec,
            store,
            runtime=runtime,
            on_start=live.on_start,
            echo=None if quiet else live.echo,
            ca_bundle=ca_bundle,
            build_log=status.update,
        )
    finally:
        live.stop()


def _number(value: Any, spec: str = ".4g") -> str:
    """A metric value for a table: 4 significant digits, '-' for NaN/inf (stored as null)."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _print_outcome(record: Record, last_n: int) -> None:
    primary = record.get("primary_metric")
    summary = (record.get("metrics_summary") or {}).get(primary or "", {})
    extra = (
        f", {primary}: last {_number(summary.get('last'))}, "
        f"mean of the last {last_n} {_number(summary.get('mean_last_n'))}"
        if summary
        else ""
    )
    click.echo(f"{record['run_id']}: {record['status']} in {record.get('duration_s') or 0:.1f}s{extra}")
    if record["status"] != "completed" and record.get("detail"):
        click.echo(f"  {record['detail']}", err=True)


@click.command(epilog=examples("harness ls", "harness ls --limit 200 --json | jq -r '.[].run_id'"))
@json_option
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="Show at most N runs.")
def ls(as_json: bool, limit: int) -> None:
    """Runs in the local store, newest first (full run ids: any unique prefix names a run)."""
    from rich import box
    from rich.table import Table

    from harness.store.local import LocalStore

    store = LocalStore()
    records = list(store.records())
    if any(r.get("status") == "running" for r in records):
        # only then: recovering loads the run machinery (pyarrow and all), seconds on a first call
        from harness.run.runner import recover

        if recover(store):
            records = list(store.records())
    records = records[:limit]
    if as_json:
        emit_json(
            [
                {
                    k: r.get(k)
                    for k in (
                        "run_id",
                        "name",
                        "status",
                        "seed",
                        "smoke",
                        "budget",
                        "params",
                        "started_at",
                        "duration_s",
                    )
                }
                for r in records
            ]
        )
        return
    if not records:
        click.echo(f"no runs in {store.root}")
        return
    primaries = {_text(record.get("primary_metric")) for record in records}
    shared = primaries.pop() if len(primaries) == 1 else None
    # The run id never wraps or shortens (it is what the user copies); the other cells fold.
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, caption=f"last value: {shared}" if shared else None, caption_justify="left"
    )
    table.add_column("run id", no_wrap=True, min_width=max(len(_text(r["run_id"])) for r in records))
    table.add_column("status", overflow="fold")
    table.add_column("seed", justify="right", overflow="fold")
    table.add_column("smoke", overflow="fold")
    table.add_column("budget", overflow="fold")
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column(
        "last" if shared else "primary metric (last)", justify="right" if shared else "left", overflow="fold"
    )
    for record in records:
        # records can come from anywhere (a pull, an older harness, a hand edit): every field is
        # shown as text of bounded length, whatever its type
        primary = _text(record.get("primary_metric"))
        summary = _mapping(_mapping(record.get("metrics_summary")).get(primary))
        value = (
            ""
            if not summary
            else _number(summary.get("last"))
            if shared
            else f"{primary} {_number(summary.get('last'))}"
        )
        table.add_row(
            _text(record["run_id"]),
            _status_text(record.get("status")),
            _text(record.get("seed")),
            "smoke" if record.get("smoke") is True else "",
            _text(" ".join(f"{key}={value}" for key, value in _mapping(record.get("budget")).items()), 60),
            _text(record.get("started_at"))[5:16].replace("T", " "),
            f"{_number(record.get('duration_s'), '.1f')}s",
            value,
        )
    console().print(table)


def _text(value: Any, limit: int = 120) -> str:
    """A record field as one line of printable text (None: empty), for tables."""
    from rich.markup import escape

    from harness.util.safefs import printable

    return escape(printable("" if value is None else str(value), limit))


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _status_text(status: Any) -> str:
    colour = (
        {"completed": "green", "imported": "blue", "running": "cyan"}.get(status, "red")
        if isinstance(status, str)
        else "red"
    )
    return f"[{colour}]{_text(status, 40)}[/{colour}]"


@click.command(
    epilog=examples("harness show dqn-cartpole-3f2a", "harness show --json dqn-cartpole-3f2a | jq .metrics_summary")
)
@click.argument("run_id", type=RUN_ID)
@json_option
@click.option("--log-lines", type=int, default=20, show_default=True)
def show(run_id: str, as_json: bool, log_lines: int) -> None:
    """Provenance, status and summary metrics of one run."""
    from rich.table import Table

    from harness.store.local import LocalStore

    store = LocalStore()
    record = store.load(run_id)
    if as_json:
        emit_json(record)
        return
    out = console()
    image, host = _mapping(record.get("image")), _mapping(record.get("host"))
    environment, gpu = _mapping(record.get("environment")), _mapping(record.get("gpu"))
    exit_code = record.get("exit_code")
    rows = [
        ("run", _text(record["run_id"])),
        ("manifest", f"{_text(record.get('name'))} (sha256 {_text(record.get('manifest_sha256'))[:12]})"),
        (
            "status",
            _status_text(record.get("status")) + (f" (exit {_text(exit_code)})" if exit_code not in (None, 0) else ""),
        ),
        (
            "seed / params",
            f"{_text(record.get('seed'))} / {_text(json.dumps(record.get('params'), sort_keys=True, default=str), 400)}",
        ),
        ("runtime", f"{_text(record.get('runtime'))} (hermetic: {_text(record.get('hermetic'))})"),
        (
            "image",
            f"{_text(image.get('tag') or image.get('ref'))} {_text(image.get('id', ''))}"
            if image
            else "none (process runtime)",
        ),
        ("started / time", f"{_text(record.get('started_at'))} / {_text(record.get('duration_s'))}s"),
        (
            "host",
            _text(
                f"{host.get('hostname')} {host.get('os', '')} {host.get('kernel', '')}; {host.get('cpu_model')} x{host.get('cpu_count')}",
                300,
            ),
        ),
        ("gpu", _text(json.dumps(gpu.get("devices") or gpu.get("reason") or "none", default=str), 300)),
        (
            "python / torch",
            f"{_text(_mapping(environment.get('python')).get('version', '-'))} / {_text(_mapping(environment.get('torch')).get('version', '-'))}",
        ),
        ("docker / harness", f"{_text(record.get('docker_version', '-'))} / {_text(record.get('harness_version'))}"),
        ("files", f"{len(_mapping(record.get('files')))} checksummed"),
    ]
    if image.get("registry_ref"):
        rows.append(("registry image", _text(image["registry_ref"], 300)))
    sandbox = _mapping(record.get("sandbox"))
    if sandbox:
        ignored = [_text(name, 20) for name, on in _mapping(sandbox.get("limits_enforced")).items() if not on]
        rows.append(
            (
                "sandbox",
                f"{_text(sandbox.get('engine'), 20)} {_text(sandbox.get('version'), 40)}"
                f"{' rootless' if sandbox.get('rootless') else ''}, cgroup {_text(sandbox.get('cgroup_version'), 10)}"
                + (f"; limits NOT enforced: {', '.join(ignored)}" if ignored else "; limits enforced"),
            )
        )
    skipped = [s for key in ("skipped_files", "metrics_skipped") for s in _list(record.get(key)) if isinstance(s, dict)]
    if skipped:
        shown = "; ".join(f"{_text(s.get('path'), 60)}: {_text(s.get('reason'), 80)}" for s in skipped[:3])
        rows.append(("skipped files", f"{len(skipped)} ({shown}{'; ...' if len(skipped) > 3 else ''})"))
    rejected = _mapping(record.get("metrics_rejected"))
    if rejected:
        rows.append(
            (
                "rejected metrics",
                ", ".join(f"{_text(reason, 40)} {_text(count, 20)}" for reason, count in sorted(rejected.items())[:20]),
            )
        )
    if record.get("reproduces"):
        rows.append(("reproduces", _text(record["reproduces"])))
    if record.get("pulled_from"):
        rows.append(("pulled from", _text(json.dumps(record["pulled_from"], default=str), 300)))
    if record.get("detail"):
        rows.append(("detail", _text(record["detail"], 600)))
    for key, value in rows:
        out.print(f"[bold]{key:>16}[/bold]  {value}")
    summary = _mapping(record.get("metrics_summary"))
    if summary:
        last_n = record.get("summary_last_n")
        shown_n = str(last_n) if isinstance(last_n, int) and not isinstance(last_n, bool) else "N"
        table = Table("metric", "count", "last", "min", "max", f"mean of last {shown_n}")
        table.columns[0].overflow = "fold"
        for name in sorted(summary)[:1000]:
            s = _mapping(summary[name])
            table.add_row(
                _text(name), _text(s.get("count")), *(_number(s.get(k)) for k in ("last", "min", "max", "mean_last_n"))
            )
        out.print(table)
    if record.get("status") != "completed":
        tail = _log_tail(store.run_dir(run_id), log_lines)
        if tail:
            out.print(f"[bold]last {len(tail)} log lines[/bold]")
            for line in tail:
                out.print(line, markup=False)


def _log_tail(run_dir: Path, lines: int, window: int = 64 << 10) -> list[str]:
    """The last ``lines`` lines of the run's log, reading at most ``window`` bytes of it."""
    import os

    from harness.util.safefs import UnsafeFile, open_beneath, printable

    try:
        fd = open_beneath(run_dir, "logs/output.log")
    except (UnsafeFile, OSError):
        return []
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, window, max(0, size - window))
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []
    return [printable(line, 500) for line in text]


@click.command(epilog=examples("harness recover", "harness recover --json"))
@json_option
def recover(as_json: bool) -> None:
    """Mark runs whose harness process died as interrupted, and seal what they left; finish what
    a full disk or a lost engine left pending (seal the run, remove its container)."""
    from harness.run.runner import recover as recover_runs
    from harness.store.local import LocalStore

    store = LocalStore()
    recovered = recover_runs(store)
    if as_json:
        emit_json({"recovered": recovered})
        return
    for run_id in recovered:
        click.echo(f"{run_id}: {store.load(run_id).get('status')} (recovered)")
    waiting = [record for record in store.records() if record.get("pending")]
    for record in waiting:
        left = ", ".join(str(item) for item in record.get("pending") or [])
        click.echo(
            f"{record['run_id']}: {record.get('status')}, still to do: {left} "
            "(the engine does not answer or the disk is still full; run `harness recover` again later)"
        )
    if not recovered and not waiting:
        click.echo("nothing to recover")


def _registry_and_podman_checks() -> list[tuple[str, bool, str]]:
    """The registry of HARNESS_REGISTRY (reachable, auth) and Podman (present, rootless, limits)."""
    import os
    import shutil

    checks: list[tuple[str, bool, str]] = []
    if os.environ.get("HARNESS_REGISTRY"):
        from harness.images.registry import check_registry, configured_registry

        try:
            status = check_registry(configured_registry(None))
            text = f"{status.registry}: {'reachable' if status.reachable else 'UNREACHABLE'}, auth {status.auth}"
            checks.append(("registry", status.ok, text + (f" ({status.detail})" if status.detail else "")))
        except HarnessError as exc:
            checks.append(("registry", False, str(exc)))
    else:
        checks.append(("registry", True, "none configured (optional: HARNESS_REGISTRY=host:port[/prefix])"))
    if shutil.which("podman") is None:
        checks.append(
            (
                "podman",
                True,
                "not installed: images are built by Docker's builder and do not rebuild to the same id "
                "(scripts/setup.sh installs podman; --runtime podman needs scripts/setup.sh --with-podman)",
            )
        )
        return checks
    from harness.runtime.podman import podman_api, podman_facts, podman_user, stop_podman_service

    try:
        podman_user()
    except HarnessError:  # podman for reproducible builds only: the rootless runtime is not set up
        checks.append(
            ("podman", True, "builds images reproducibly; --runtime podman needs scripts/setup.sh --with-podman")
        )
        return checks
    try:
        facts = podman_facts(podman_api())
        enforced = [name for name, on in facts["limits_enforced"].items() if on]
        ignored = [name for name, on in facts["limits_enforced"].items() if not on]
        who = (
            f"rootless as {facts['user']}"
            if facts["rootless"] and facts.get("user")
            else ("rootless" if facts["rootless"] else "rootful")
        )
        text = (
            f"{facts['version']}, {who}, cgroup {facts['cgroup_version']}; limits enforced: "
            f"{', '.join(enforced) or 'none'}"
            + (f"; NOT enforced: {', '.join(ignored)}" if ignored else "")
            + "; builds images reproducibly"
        )
        checks.append(("podman", True, text))
    except HarnessError as exc:
        checks.append(("podman", False, str(exc)))
    finally:
        stop_podman_service()
    return checks


@click.command(epilog=examples("harness doctor", "harness doctor --json | jq '.checks[] | select(.ok | not)'"))
@json_option
def doctor(as_json: bool) -> None:
    """Check the prerequisites: Docker engine, base image, GPU/NVML, Hub login, Slurm."""
    import shutil

    from harness.images.build import BASE_IMAGE

    checks: list[tuple[str, bool, str]] = []
    try:
        from harness.runtime.docker import engine_version
        from harness.runtime.engine import docker_client
        from harness.runtime.engine_api import engine_api

        client = docker_client(timeout=10)
        checks.append(("docker engine", True, f"reachable, version {engine_version(engine_api(timeout=10))}"))
        try:
            client.images.get(BASE_IMAGE)
            checks.append(("base image", True, BASE_IMAGE))
            from harness.images.mirror import check_mirror, image_debs

            # informational: a moved mirror does not stop runs, only a bit-identical re-bootstrap
            checks.append(("base mirror", True, check_mirror(image_debs(BASE_IMAGE)).detail))
        except Exception:  # noqa: BLE001 — doctor reports any engine answer other than the image as a missing base image
            checks.append(("base image", False, f"{BASE_IMAGE} missing: run `harness image bootstrap`"))
    except HarnessError as exc:
        checks.append(("docker engine", False, str(exc)))
    from harness.capture.gpu import host_gpu_status

    gpus = host_gpu_status()
    checks.append(
        (
            "gpu / nvml",
            True,
            f"{len(gpus.get('devices', []))} GPU(s)" if gpus.get("available") else f"absent ({gpus.get('reason')})",
        )
    )
    checks.append(
        (
            "mmdebstrap",
            shutil.which("mmdebstrap") is not None,
            shutil.which("mmdebstrap") or "not installed (apt-get install mmdebstrap)",
        )
    )
    checks.append(
        (
            "slurm",
            shutil.which("sbatch") is not None,
            shutil.which("sbatch") or "not installed (optional: --backend slurm)",
        )
    )
    try:
        from huggingface_hub import get_token

        checks.append(
            ("hub login", True, "token found (HF_TOKEN or login)" if get_token() else "none (publish needs HF_TOKEN)")
        )
    except Exception as exc:  # noqa: BLE001 — doctor reports, never fails, on a broken Hub client set-up
        checks.append(("hub login", True, f"unknown ({exc})"))
    checks += _registry_and_podman_checks()
    failed = any(not ok and name in {"docker engine", "base image"} for name, ok, _ in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [{"name": name, "ok": ok, "detail": text} for name, ok, text in checks]})
    else:
        for name, ok, text in checks:
            click.echo(f"{'ok ' if ok else 'NO '} {name:14} {text}")
    sys.exit(1 if failed else 0)
