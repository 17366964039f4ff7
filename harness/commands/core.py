"""The core commands: validate, schema, lock, image, build, run, ls, show, recover, doctor."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from harness.commands.options import ca_bundle_option, console, json_option, runtime_option
from harness.commands.output import emit_json, examples
from harness.errors import HarnessError
from harness.record import Record
from harness.runids import RUN_ID

_console = console


@click.command(epilog=examples("harness validate manifests/*.yaml", "harness validate --json manifests/dqn-cartpole.yaml"))
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
@json_option
def lock(image_dirs: tuple[Path, ...], check: bool, as_json: bool) -> None:
    """pip-compile --generate-hashes each image's requirements.in into lockfiles/<name>.txt."""
    from harness.lock import compile_lockfile, stale_lockfiles

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
            raise HarnessError(f"{image_dir}: no requirements.in (an image folder holds Dockerfile, requirements.in, workload/)")
        with _console(stderr=as_json).status(f"locking {image_dir} (pip-compile)"):
            output = compile_lockfile(image_dir)
        written.append(str(output))
        if not as_json:
            click.echo(f"wrote {output}")
    if as_json:
        emit_json({"written": written})


@click.group(epilog=examples("harness image bootstrap"))
def image() -> None:
    """Base images."""


@image.command("bootstrap", epilog=examples("harness image bootstrap", "harness image bootstrap --force"))
@click.option("--name", default="harness/base:bookworm", show_default=True)
@click.option("--suite", default="bookworm", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even when the image exists.")
def bootstrap(name: str, suite: str, force: bool) -> None:
    """Make the base image from Debian packages (mmdebstrap), for hosts without a registry."""
    from harness.images import bootstrap_base

    with _console().status(f"bootstrapping {name} from Debian {suite}"):
        info = bootstrap_base(name, suite, force=force)
    click.echo(f"{name}: {info.id} ({len(info.packages)} Debian packages){' (exists)' if info.cached else ''}")


@click.command(epilog=examples("harness build manifests/dqn-cartpole.yaml", "harness build --force manifests/noop.yaml"))
@click.argument("manifest", type=click.Path(path_type=Path))
@ca_bundle_option
@click.option("--force", is_flag=True, help="Build even when the content-addressed tag exists.")
@click.option("--quiet", is_flag=True)
@json_option
def build(manifest: Path, ca_bundle: Path | None, force: bool, quiet: bool, as_json: bool) -> None:
    """Build (or find) the content-addressed image of a manifest."""
    from harness.images import prepare_image
    from harness.manifest import load_manifest
    from harness.plan import expand

    loaded = load_manifest(manifest)
    spec = expand(loaded)[0]
    if quiet or as_json:
        info = prepare_image(spec.loaded, ca_bundle, force)
    else:
        with _console().status(f"building {loaded.manifest.image.build or loaded.manifest.image.ref}") as status:
            info = prepare_image(spec.loaded, ca_bundle, force, log=lambda line: status.update(f"[dim]{line[:120]}"))
    if as_json:
        emit_json({"tag": info.tag, "ref": info.ref, "id": info.id, "content_hash": info.content_hash,
                   "cached": info.cached, "build_seconds": info.build_seconds})
        return
    state = "cached, no build" if info.cached else f"built in {info.build_seconds:.1f}s"
    click.echo(f"{info.tag or info.ref} {info.id} ({state})")


@click.command(epilog=examples(
    "harness run manifests/dqn-cartpole.yaml",
    "harness run manifests/noop.yaml --smoke --param seconds=2 --json",
    "harness run manifests/dqn-sweep.yaml --jobs 2",
))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--seed", "seeds", type=int, multiple=True, help="Run these seeds instead of the manifest's.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a param.")
@click.option("--smoke", is_flag=True, help="Apply the manifest's smoke params (a quick run for CI).")
@runtime_option
@click.option("--backend", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option("--jobs", type=int, help="At most this many runs at once.")
@click.option("--partition", help="Slurm partition.")
@click.option("--account", help="Slurm account.")
@click.option("--rerun", is_flag=True, help="Run again even when the store has a completed run of the same config.")
@click.option("--retry-failed", is_flag=True, help="Re-run failed, timed-out, OOM and interrupted runs.")
@click.option("--dry-run", is_flag=True, help="List what would run.")
@click.option("--yes", is_flag=True, help="Confirm a sweep of more than 10,000 runs.")
@ca_bundle_option
@click.option("--quiet", is_flag=True, help="Do not stream the job's output (progress is still shown).")
@click.option("--progress-every", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="When not on a terminal (or CI is set): one progress line every SECONDS "
                   "[default: $HARNESS_PROGRESS_INTERVAL or 10].")
@click.option("--require-limits", is_flag=True,
              help="Refuse to run where the sandbox cannot enforce the memory, CPU and pids limits "
                   "(rootless Podman on cgroup v1); by default such a run goes on with a warning.")
@json_option
def run(manifest: Path, seeds: tuple[int, ...], params: tuple[str, ...], smoke: bool, runtime: str, backend: str,
        jobs: int | None, partition: str | None, account: str | None, rerun: bool, retry_failed: bool,
        dry_run: bool, yes: bool, ca_bundle: Path | None, quiet: bool, progress_every: float | None,
        require_limits: bool, as_json: bool) -> None:
    """Run a manifest (all its seeds × sweep) into the local store.

    A single run shows its progress while it goes (elapsed, last step, primary metric, ETA when a
    param such as total_timesteps says how many steps): redrawn in place on a terminal, one plain
    line every --progress-every seconds in a pipe or when CI is set.
    """
    import os

    from harness.manifest import load_manifest
    from harness.plan import expand, parse_overrides
    from harness.store.local import LocalStore

    if require_limits:
        # the environment carries it to every run of this process and to the Slurm tasks it submits
        os.environ["HARNESS_REQUIRE_LIMITS"] = "1"

    loaded = load_manifest(manifest)
    specs = expand(loaded, seeds=list(seeds) or None, overrides=parse_overrides(params, loaded), smoke=smoke)
    store = LocalStore()
    if len(specs) > 1 or backend != "local" or dry_run or retry_failed:
        from harness.backends import run_sweep

        outcome = run_sweep(specs, store=store, backend=backend, runtime=runtime, jobs=jobs, partition=partition,
                            account=account, retry_failed=retry_failed, dry_run=dry_run, yes=yes, rerun=rerun,
                            echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo)
        if as_json:
            emit_json(_sweep_json(outcome))
        sys.exit(outcome.exit_code)
    from harness.backends import plan_sweep

    spec = specs[0]
    # a single run that ended badly runs again without --retry-failed; a completed one needs --rerun
    completed = plan_sweep(specs, store, retry_failed=True, rerun=rerun).completed
    if completed:
        if as_json:
            emit_json(_run_json(store.load(completed[0]), store, skipped=True))
            return
        click.echo(f"{spec.run_id}: already completed with this manifest, params and seed "
                   "(use --rerun to run it again)")
        return
    console = _console(stderr=as_json)
    with console.status(f"preparing {spec.name} seed {spec.seed}") as status:
        record = _execute_with_status(spec, store, runtime, ca_bundle, status, quiet, err=as_json,
                                      progress_every=progress_every)
    if as_json:
        emit_json(_run_json(record, store))
    else:
        _print_outcome(record)
    sys.exit(0 if record["status"] == "completed" else 1)


def _run_json(record: Mapping[str, Any], store: Any, skipped: bool = False) -> dict[str, Any]:
    """``harness run --json`` of one run (docs/cli-json.md)."""
    primary = record.get("primary_metric")
    summary = (record.get("metrics_summary") or {}).get(primary or "") or {}
    return {
        "run_id": record["run_id"], "name": record.get("name"), "status": record.get("status"),
        "skipped": skipped, "seed": record.get("seed"), "params": record.get("params"),
        "duration_s": record.get("duration_s"), "exit_code": record.get("exit_code"), "detail": record.get("detail") or "",
        "run_dir": str(store.run_dir(record["run_id"])), "primary_metric": primary,
        "primary_last": summary.get("last"), "primary_mean_last_n": summary.get("mean_last_n"),
    }


def _sweep_json(outcome: Any) -> dict[str, Any]:
    """``harness run --json`` of a sweep (docs/cli-json.md)."""
    plan = outcome.plan
    return {
        "sweep_id": plan.sweep_id, "backend": outcome.backend, "dry_run": outcome.dry_run, "ok": outcome.ok,
        "total": len(plan.specs), "to_run": [spec.run_id for spec in plan.to_run],
        "already_completed": plan.completed, "failed_earlier": plan.failed, "still_running": plan.running,
        "runs": [{k: r.get(k) for k in ("run_id", "status", "seed", "params", "duration_s")} for r in outcome.records],
        "slurm_job_ids": outcome.slurm_job_ids,
    }


def _execute_with_status(spec: Any, store: Any, runtime: str, ca_bundle: Path | None, status: Any, quiet: bool,
                         err: bool = False, progress_every: float | None = None) -> Record:
    """Run one spec with live progress (harness.progress) below the job's streamed output."""
    from harness.progress import LiveRun
    from harness.runner import execute

    def announce(record: dict) -> None:
        status.stop()
        click.echo(f"{record['run_id']}: running ({record['runtime']}) -> {store.run_dir(record['run_id'])}", err=err)

    live = LiveRun(spec, store, None, interval=progress_every, announce=announce, err=err)
    try:
        return execute(spec, store, runtime=runtime, on_start=live.on_start, echo=None if quiet else live.echo,
                       ca_bundle=ca_bundle, build_log=lambda line: status.update(f"building image: [dim]{line[:100]}"))
    finally:
        live.stop()


def _number(value: Any) -> str:
    """A metric value for a table: 4 significant digits, '-' for NaN/inf (stored as null)."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _print_outcome(record: Record) -> None:
    primary = record.get("primary_metric")
    summary = (record.get("metrics_summary") or {}).get(primary or "", {})
    extra = f", {primary}: last {_number(summary.get('last'))}, mean of last N {_number(summary.get('mean_last_n'))}" if summary else ""
    click.echo(f"{record['run_id']}: {record['status']} in {record.get('duration_s') or 0:.1f}s{extra}")
    if record["status"] != "completed" and record.get("detail"):
        click.echo(f"  {record['detail']}", err=True)


@click.command(epilog=examples("harness ls", "harness ls --limit 200 --json | jq -r '.[].run_id'"))
@json_option
@click.option("--limit", type=int, default=50, show_default=True)
def ls(as_json: bool, limit: int) -> None:
    """Runs in the local store, newest first (full run ids: any unique prefix names a run)."""
    from rich import box
    from rich.table import Table

    from harness.runner import recover
    from harness.store.local import LocalStore

    store = LocalStore()
    recover(store)
    records = list(store.records())[:limit]
    if as_json:
        click.echo(json.dumps([{k: r.get(k) for k in ("run_id", "name", "status", "seed", "params", "started_at", "duration_s")} for r in records], indent=2))
        return
    if not records:
        click.echo(f"no runs in {store.root}")
        return
    primaries = {record.get("primary_metric") or "" for record in records}
    shared = primaries.pop() if len(primaries) == 1 else None
    # The run id never wraps or shortens (it is what the user copies); the other cells fold.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=f"last value: {shared}" if shared else None,
                  caption_justify="left")
    table.add_column("run id", no_wrap=True, min_width=max(len(r["run_id"]) for r in records))
    table.add_column("status", overflow="fold")
    table.add_column("seed", justify="right", overflow="fold")
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("last" if shared else "primary metric (last)", justify="right" if shared else "left", overflow="fold")
    for record in records:
        primary = record.get("primary_metric") or ""
        summary = (record.get("metrics_summary") or {}).get(primary)
        value = "" if not summary else _number(summary.get("last")) if shared else f"{primary} {_number(summary.get('last'))}"
        table.add_row(record["run_id"], _status_text(record.get("status", "")), str(record.get("seed")),
                      (record.get("started_at") or "")[5:16].replace("T", " "), f"{record.get('duration_s') or 0:.1f}s", value)
    _console().print(table)


def _status_text(status: str) -> str:
    colour = {"completed": "green", "running": "cyan"}.get(status, "red")
    return f"[{colour}]{status}[/{colour}]"


@click.command(epilog=examples("harness show dqn-cartpole-3f2a", "harness show --json dqn-cartpole-3f2a | jq .metrics_summary"))
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
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    console = _console()
    image = record.get("image") or {}
    host = record.get("host") or {}
    environment = record.get("environment") or {}
    rows = [
        ("run", record["run_id"]), ("manifest", f"{record.get('name')} (sha256 {str(record.get('manifest_sha256'))[:12]})"),
        ("status", _status_text(record.get("status", "")) + (f" (exit {record.get('exit_code')})" if record.get("exit_code") not in (None, 0) else "")),
        ("seed / params", f"{record.get('seed')} / {json.dumps(record.get('params'), sort_keys=True)}"),
        ("runtime", f"{record.get('runtime')} (hermetic: {record.get('hermetic')})"),
        ("image", f"{image.get('tag') or image.get('ref')} {image.get('id', '')}" if image else "none (process runtime)"),
        ("started / time", f"{record.get('started_at')} / {record.get('duration_s')}s"),
        ("host", f"{host.get('hostname')} {host.get('os', '')} {host.get('kernel', '')}; {host.get('cpu_model')} x{host.get('cpu_count')}"),
        ("gpu", json.dumps(record.get("gpu", {}).get("devices") or record.get("gpu", {}).get("reason") or "none")),
        ("python / torch", f"{(environment.get('python') or {}).get('version', '-')} / {(environment.get('torch') or {}).get('version', '-')}"),
        ("docker / harness", f"{record.get('docker_version', '-')} / {record.get('harness_version')}"),
        ("files", f"{len(record.get('files') or {})} checksummed"),
    ]
    if image.get("registry_ref"):
        rows.append(("registry image", str(image["registry_ref"])))
    if record.get("sandbox"):
        sandbox = record["sandbox"]
        ignored = [name for name, on in (sandbox.get("limits_enforced") or {}).items() if not on]
        rows.append(("sandbox", f"{sandbox.get('engine')} {sandbox.get('version')}"
                                f"{' rootless' if sandbox.get('rootless') else ''}, cgroup {sandbox.get('cgroup_version')}"
                                + (f"; limits NOT enforced: {', '.join(ignored)}" if ignored else "; limits enforced")))
    if record.get("reproduces"):
        rows.append(("reproduces", str(record["reproduces"])))
    if record.get("pulled_from"):
        rows.append(("pulled from", json.dumps(record["pulled_from"])))
    if record.get("detail"):
        rows.append(("detail", record["detail"]))
    for key, value in rows:
        console.print(f"[bold]{key:>16}[/bold]  {value}")
    summary = record.get("metrics_summary") or {}
    if summary:
        table = Table("metric", "count", "last", "min", "max", "mean of last N")
        table.columns[0].overflow = "fold"
        for name in sorted(summary):
            s = summary[name]
            table.add_row(name, str(s.get("count")), *(_number(s.get(k)) for k in ("last", "min", "max", "mean_last_n")))
        console.print(table)
    if record.get("status") != "completed":
        log_path = store.run_dir(run_id) / "logs" / "output.log"
        if log_path.is_file():
            tail = log_path.read_text(errors="replace").splitlines()[-log_lines:]
            console.print(f"[bold]last {len(tail)} log lines[/bold]")
            for line in tail:
                console.print(line, markup=False)


@click.command(epilog=examples("harness recover", "harness recover --json"))
@json_option
def recover(as_json: bool) -> None:
    """Mark runs whose harness process died as interrupted, and seal what they left."""
    from harness.runner import recover as recover_runs
    from harness.store.local import LocalStore

    recovered = recover_runs(LocalStore())
    if as_json:
        emit_json({"recovered": recovered})
        return
    for run_id in recovered:
        click.echo(f"{run_id}: interrupted (recovered)")
    if not recovered:
        click.echo("nothing to recover")


def _registry_and_podman_checks() -> list[tuple[str, bool, str]]:
    """The registry of HARNESS_REGISTRY (reachable, auth) and Podman (present, rootless, limits)."""
    import os
    import shutil

    checks: list[tuple[str, bool, str]] = []
    if os.environ.get("HARNESS_REGISTRY"):
        from harness.registry import check_registry, configured_registry

        try:
            status = check_registry(configured_registry(None))
            text = f"{status.registry}: {'reachable' if status.reachable else 'UNREACHABLE'}, auth {status.auth}"
            checks.append(("registry", status.ok, text + (f" ({status.detail})" if status.detail else "")))
        except HarnessError as exc:
            checks.append(("registry", False, str(exc)))
    else:
        checks.append(("registry", True, "none configured (optional: HARNESS_REGISTRY=host:port[/prefix])"))
    if shutil.which("podman") is None:
        checks.append(("podman", True, "not installed (optional: --runtime podman; scripts/setup.sh --with-podman)"))
        return checks
    from harness.runtime.podman import podman_api, podman_facts, stop_podman_service

    try:
        facts = podman_facts(podman_api())
        enforced = [name for name, on in facts["limits_enforced"].items() if on]
        ignored = [name for name, on in facts["limits_enforced"].items() if not on]
        who = f"rootless as {facts['user']}" if facts["rootless"] and facts.get("user") else (
            "rootless" if facts["rootless"] else "rootful")
        text = (f"{facts['version']}, {who}, cgroup {facts['cgroup_version']}; limits enforced: "
                f"{', '.join(enforced) or 'none'}" + (f"; NOT enforced: {', '.join(ignored)}" if ignored else ""))
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

    from harness.images import BASE_IMAGE

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
        except Exception:
            checks.append(("base image", False, f"{BASE_IMAGE} missing: run `harness image bootstrap`"))
    except HarnessError as exc:
        checks.append(("docker engine", False, str(exc)))
    from harness.capture.gpu import host_gpu_status

    gpus = host_gpu_status()
    checks.append(("gpu / nvml", True, f"{len(gpus.get('devices', []))} GPU(s)" if gpus.get("available") else f"absent ({gpus.get('reason')})"))
    checks.append(("mmdebstrap", shutil.which("mmdebstrap") is not None, shutil.which("mmdebstrap") or "not installed (apt-get install mmdebstrap)"))
    checks.append(("slurm", shutil.which("sbatch") is not None, shutil.which("sbatch") or "not installed (optional: --backend slurm)"))
    try:
        from huggingface_hub import get_token

        checks.append(("hub login", True, "token found (HF_TOKEN or login)" if get_token() else "none (publish needs HF_TOKEN)"))
    except Exception as exc:
        checks.append(("hub login", True, f"unknown ({exc})"))
    checks += _registry_and_podman_checks()
    failed = any(not ok and name in {"docker engine", "base image"} for name, ok, _ in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [{"name": name, "ok": ok, "detail": text} for name, ok, text in checks]})
    else:
        for name, ok, text in checks:
            click.echo(f"{'ok ' if ok else 'NO '} {name:14} {text}")
    sys.exit(1 if failed else 0)
