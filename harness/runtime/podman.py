"""The Podman runtime: the same sandbox as ``docker``, through Podman's Docker-compatible API.

Podman 4 serves the Docker Engine API (v1.41) on a unix socket, so the run path
(:class:`harness.runtime.docker.DockerJob` over :class:`harness.runtime.engine_api.EngineAPI`)
drives it unchanged. What differs lives here:

* **The service.** A socket named by ``HARNESS_PODMAN_SOCKET``, else the user's default one
  (``$XDG_RUNTIME_DIR/podman/podman.sock``) when it answers, else ``podman system service`` started
  by the harness (as the unprivileged ``HARNESS_PODMAN_USER``, default ``harness-podman``, when the
  harness runs as root) and stopped by its PID when the harness exits, with the rootless pause
  process if the harness started that too and nothing else of that user still runs.
* **Limits.** Rootless Podman on cgroup v1 cannot apply memory, CPU or pids limits (and a rootless
  cgroup v2 host only those controllers delegated to the user). :func:`podman_facts` says which are
  enforced; the container is created without the others, the record says so
  (``sandbox.limits_enforced``), and ``--require-limits`` refuses such a run.
* **Images.** A digest reference is pulled by Podman itself; an image built from a recipe is built
  by the Docker engine and copied over (``docker save`` -> ``podman load`` through the two APIs),
  so both runtimes run the same image id. That is ``harness.images.podman``: a runtime does not
  build or fetch images.
* **Sampling.** Without a cgroup of its own (rootless on v1) the container is sampled as the host
  process tree of its init (its host PID), not through a cgroup that holds other processes.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import EngineError, HarnessError
from harness.runtime.docker import DockerJob, container_config
from harness.runtime.engine_api import EngineAPI
from harness.runtime.job import JobRequest

if TYPE_CHECKING:
    pass

USER_ENV = "HARNESS_PODMAN_USER"
SOCKET_ENV = "HARNESS_PODMAN_SOCKET"
REQUIRE_LIMITS_ENV = "HARNESS_REQUIRE_LIMITS"
DEFAULT_USER = "harness-podman"
START_TIMEOUT_S = 60
ANSWER_TIMEOUT_S = 5
LIMITS = ("memory", "cpus", "pids")
PODMAN_HINT = "apt-get install -y podman uidmap slirp4netns, or run scripts/setup.sh --with-podman"


@dataclass(frozen=True)
class PodmanUser:
    """Who runs Podman: the unprivileged user (rootless) or root."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def runtime_dir(self) -> Path:
        """Its ``XDG_RUNTIME_DIR``: this process's own, else the folder Podman itself would pick (made
        here when missing, by root for another user)."""
        if self.uid == os.geteuid() and os.environ.get("XDG_RUNTIME_DIR"):
            return Path(os.environ["XDG_RUNTIME_DIR"])
        if self.uid != os.geteuid():
            return Path(f"/run/user/{self.uid}")
        return own_runtime_dir(self.uid)

    def environment(self) -> dict[str, str]:
        """The environment of a Podman process of this user (nothing of the harness's own)."""
        return {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
        }


def _private_dir(path: Path, uid: int) -> bool:
    """Make ``path`` (mode 0700) unless it exists; whether it is now a folder that ``uid`` owns and
    nobody else can write to (one made by another user in a shared temp dir is not used)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022


def own_runtime_dir(uid: int) -> Path:
    """The runtime folder of this process's user without ``XDG_RUNTIME_DIR`` (no login session:
    ``su``, a batch job, a container), chosen as Podman chooses it: ``/run/user/<uid>`` when that is
    the user's, else ``$TMPDIR/podman-run-<uid>``. HarnessError when neither can be used."""
    login = Path(f"/run/user/{uid}")
    if _private_dir(login, uid):
        return login
    fallback = Path(os.environ.get("TMPDIR") or "/tmp") / f"podman-run-{uid}"
    if _private_dir(fallback, uid):
        return fallback
    raise HarnessError(
        f"no runtime folder for Podman: {login} is not yours and {fallback} is not a folder only you "
        "can write to; set XDG_RUNTIME_DIR to a private folder of yours (mode 0700)"
    )


def podman_user() -> PodmanUser:
    """The user Podman runs as: ``HARNESS_PODMAN_USER`` (``harness-podman`` when the harness is root;
    this process's user otherwise). HarnessError when that user does not exist."""
    name = os.environ.get(USER_ENV) or (DEFAULT_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise HarnessError(
            f"{USER_ENV}={name}: no such user; rootless Podman needs an unprivileged user with "
            "/etc/subuid and /etc/subgid ranges (`useradd -m harness-podman`, or scripts/setup.sh --with-podman)"
        ) from None
    if entry.pw_uid != os.geteuid() and os.geteuid() != 0:
        raise HarnessError(f"{USER_ENV}={name}: only root can start Podman as another user; unset it")
    return PodmanUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _answers(path: Path) -> bool:
    """Whether a service answers on ``path`` within ANSWER_TIMEOUT_S (one that hangs does not)."""
    try:
        EngineAPI(str(path), timeout=ANSWER_TIMEOUT_S).version()
        return True
    except (OSError, EngineError):
        return False


class PodmanService:
    """``podman system service`` on a socket of its own, started as ``user`` and stopped by PID."""

    def __init__(self, user: PodmanUser):
        self.user = user
        self.socket = user.runtime_dir / f"harness-podman-{os.getpid()}.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self._pause_existed = True

    @property
    def pause_pid_file(self) -> Path:
        return self.user.runtime_dir / "libpod" / "tmp" / "pause.pid"

    @property
    def pause_marker(self) -> Path:
        """Names the pause process when a harness service brought it up."""
        return self.user.runtime_dir / "harness-pause.pid"

    def start(self) -> None:
        """Start the service and wait for its socket to answer; EngineError when it does not."""
        podman = shutil.which("podman")
        if podman is None:
            raise EngineError(f"--runtime podman: podman is not installed ({PODMAN_HINT})")
        runtime_dir = self.user.runtime_dir
        if not runtime_dir.is_dir():
            runtime_dir.mkdir(mode=0o700, parents=True)
            os.chown(runtime_dir, self.user.uid, self.user.gid)
        self._stop_stale_services()
        self._pause_existed = _pid_alive(_read_pid(self.pause_pid_file))
        self.socket.unlink(missing_ok=True)
        log = open(runtime_dir / f"harness-podman-{os.getpid()}.log", "wb")
        as_other = self.user.uid != os.geteuid()
        self.process = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{self.socket}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self.user.home if os.path.isdir(self.user.home) else "/",
            env=self.user.environment(),
            start_new_session=True,
            user=self.user.uid if as_other else None,
            group=self.user.gid if as_other else None,
            extra_groups=[] if as_other else None,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (
                    (runtime_dir / f"harness-podman-{os.getpid()}.log").read_text(errors="replace").strip().splitlines()
                )
                raise EngineError(
                    f"podman system service (user {self.user.name}) exited: {tail[-1] if tail else 'no output'}"
                )
            if self.socket.exists() and _answers(self.socket):
                self.pids = [self.process.pid, *_service_pids(self.socket)]
                pause = _read_pid(self.pause_pid_file)
                if not self._pause_existed and pause is not None:
                    # the harness made the pause process: the last harness service to stop ends it
                    self.pause_marker.write_text(str(pause))
                return
            time.sleep(0.1)
        self.stop()
        raise EngineError(
            f"podman system service (user {self.user.name}) did not answer on {self.socket} in {START_TIMEOUT_S}s"
        )

    def _stop_stale_services(self) -> None:
        """Stop the services of harness processes that died without stopping theirs (``kill -9``)."""
        for stale in self.user.runtime_dir.glob("harness-podman-*.sock"):
            owner = stale.stem.rsplit("-", 1)[-1]
            if owner.isdigit() and int(owner) != os.getpid() and not _pid_alive(int(owner)):
                for pid in _service_pids(stale):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except (ProcessLookupError, PermissionError):
                        pass
                stale.unlink(missing_ok=True)
                stale.with_suffix(".log").unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL) and the pause process if it came with it."""
        process, self.process = self.process, None
        # rootless podman re-executes itself inside the user namespace: the service that answers is
        # a child of the process started, and outlives it unless it is stopped by its own PID
        pids = [*self.pids, *_service_pids(self.socket)]
        self.pids = []
        for pid in dict.fromkeys(pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                continue
        if process is not None:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        deadline = time.monotonic() + 15
        while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.socket.unlink(missing_ok=True)
        (self.user.runtime_dir / f"harness-podman-{os.getpid()}.log").unlink(missing_ok=True)
        if self.user.uid == 0:
            return
        pause = _read_pid(self.pause_pid_file)
        if pause is None or _read_pid(self.pause_marker) != pause:
            return  # not the harness's (the user's own Podman made it), or already gone
        if _pid_alive(pause) and not _other_processes(self.user.uid, pause):
            try:
                os.kill(pause, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            self.pause_marker.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie that its new parent has not reaped yet does not)."""
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _service_pids(socket_path: Path) -> list[int]:
    """PIDs of the podman processes serving ``socket_path``."""
    import psutil

    needle = f"unix://{socket_path}"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if needle in (process.info["cmdline"] or []):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def _other_processes(uid: int, pause: int) -> bool:
    """Whether user ``uid`` runs anything but its pause process (another Podman user of it)."""
    import psutil

    for process in psutil.process_iter(["uids", "status"]):
        try:
            if (
                process.pid not in (pause, os.getpid())  # a harness run by that user itself
                and process.info["uids"]
                and process.info["uids"].real == uid
                and process.info["status"] != psutil.STATUS_ZOMBIE
            ):
                return True
        except psutil.Error:
            continue
    return False


_api: EngineAPI | None = None
_service: PodmanService | None = None
_lock = threading.Lock()


def podman_api() -> EngineAPI:
    """A client of Podman's Docker-compatible API: ``HARNESS_PODMAN_SOCKET``, the user's running
    service, or one the harness starts now (and stops when this process exits)."""
    global _api, _service
    with _lock:
        if _api is not None:
            return _api
        explicit = os.environ.get(SOCKET_ENV)
        if explicit:
            path = Path(explicit.removeprefix("unix://"))
            if not _answers(path):
                raise EngineError(
                    f"{SOCKET_ENV}={explicit}: no Podman service answers there in {ANSWER_TIMEOUT_S}s "
                    "(start one with `podman system service --time=0 unix://<path>`, or unset it)"
                )
            _api = EngineAPI(str(path))
            return _api
        user = podman_user()
        default = user.runtime_dir / "podman" / "podman.sock"
        if default.exists() and _answers(default):
            _api = EngineAPI(str(default))
            return _api
        service = PodmanService(user)
        service.start()
        _service = service
        atexit.register(stop_podman_service)
        _api = EngineAPI(str(service.socket))
        return _api


def stop_podman_service() -> None:
    """Stop the service this process started, if any (also called at exit)."""
    global _api, _service
    with _lock:
        if _service is not None:
            _service.stop()
            _service = None
            _api = None


_facts: dict[str, dict[str, Any]] = {}


def podman_facts(api: EngineAPI) -> dict[str, Any]:
    """What the record says of the sandbox: engine, version, rootless, cgroup version, and which
    limits the host really enforces (asked once per socket)."""
    if api.path in _facts:
        return _facts[api.path]
    info = api.call("GET", "/libpod/info")
    host = info.get("host") or {}
    rootless = bool((host.get("security") or {}).get("rootless"))
    cgroup = str(host.get("cgroupVersion") or "unknown")
    controllers = set(host.get("cgroupControllers") or [])
    if not rootless:
        enforced = dict.fromkeys(LIMITS, True)
    elif cgroup == "v1":
        enforced = dict.fromkeys(LIMITS, False)
    else:
        enforced = {"memory": "memory" in controllers, "cpus": "cpu" in controllers, "pids": "pids" in controllers}
    facts = {
        "engine": "podman",
        "version": str((info.get("version") or {}).get("Version", "unknown")),
        "rootless": rootless,
        "cgroup_version": cgroup,
        "limits_enforced": enforced,
        "user": podman_user().name if not os.environ.get(SOCKET_ENV) else None,
    }
    _facts[api.path] = facts
    return facts


def limits_warning(facts: dict[str, Any]) -> str | None:
    """The line said before a run whose limits are not all enforced, or None."""
    missing = [name for name, on in facts["limits_enforced"].items() if not on]
    if not missing:
        return None
    why = (
        "rootless Podman on cgroup v1"
        if facts.get("rootless") and facts.get("cgroup_version") == "v1"
        else "controllers not delegated to the Podman user"
    )
    return (
        f"warning: {', '.join(missing)} limit(s) NOT enforced ({why}); the run goes on without them "
        "and its record says so (--require-limits refuses such a run)"
    )


def check_limits(facts: dict[str, Any], require: bool) -> str | None:
    """HarnessError when ``require`` and a limit is not enforced; otherwise the warning (or None)."""
    warning = limits_warning(facts)
    if warning is not None and require:
        missing = [name for name, on in facts["limits_enforced"].items() if not on]
        raise HarnessError(
            f"--require-limits: this Podman ({'rootless, ' if facts['rootless'] else ''}cgroup "
            f"{facts['cgroup_version']}) cannot enforce the {', '.join(missing)} limit(s); "
            "use a cgroup v2 host with delegated controllers, or the docker runtime"
        )
    return warning


def check_reachable(path: Path, user: PodmanUser) -> None:
    """HarnessError unless every folder above ``path`` can be searched by ``user`` (a bind mount of
    rootless Podman is opened as that user)."""
    if user.uid == 0:
        return
    current = path.resolve()
    for folder in [current, *current.parents]:
        try:
            info = folder.stat()
        except OSError:
            continue
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == user.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            raise HarnessError(
                f"{folder}: user {user.name} (rootless Podman) cannot enter it, so it cannot mount "
                f"{path}: put the results store (HARNESS_HOME) somewhere it can reach, "
                f"or `chmod o+x {folder}`"
            )


def reachable_package_dir(user: PodmanUser) -> Path | None:
    """None when ``user`` can mount the harness package where it is; otherwise a copy of its Python
    files under the user's runtime folder (made once per harness version and content)."""
    import hashlib

    from harness.runtime.docker import harness_package_dir

    package = harness_package_dir()
    try:
        check_reachable(package, user)
        return None
    except HarnessError:
        pass
    files = sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    target = user.runtime_dir / "harness-lib" / digest.hexdigest()[:16] / "harness"
    if not target.is_dir():
        staging = target.with_name(f".staging-{os.getpid()}")
        for path in files:
            destination = staging / path.relative_to(package)
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            shutil.copyfile(path, destination)
        for folder in [user.runtime_dir / "harness-lib", target.parent]:
            folder.mkdir(exist_ok=True, mode=0o755)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another run staged it first
    return target


class PodmanJob(DockerJob):
    """A run's container in Podman: the docker sandbox less the limits the host cannot apply."""

    def __init__(self, api: EngineAPI, image_id: str, request: JobRequest, facts: dict[str, Any]):
        self.facts = facts
        self.package_dir: Path | None = None  # a copy of the harness package the Podman user can mount
        if facts.get("user"):
            user = podman_user()
            for path in (request.out_dir, *([request.hub_cache] if request.hub_cache else [])):
                check_reachable(path, user)
            self.package_dir = reachable_package_dir(user)
        super().__init__(api, image_id, request)

    def config(self, image_id: str, request: JobRequest) -> dict[str, Any]:
        """The create request: as docker's, with the unenforced limits left out (never claimed)."""
        config = container_config(image_id, request)
        host = config["HostConfig"]
        enforced = self.facts["limits_enforced"]
        if not enforced["memory"]:
            host.pop("Memory", None)
            host.pop("MemorySwap", None)
        if not enforced["cpus"]:
            host.pop("NanoCpus", None)
        if not enforced["pids"]:
            host.pop("PidsLimit", None)
        if self.package_dir is not None:
            from harness.runtime.docker import harness_package_dir

            original = f"{harness_package_dir()}:"
            host["Binds"] = [
                f"{self.package_dir}:{bind[len(original) :]}" if bind.startswith(original) else bind
                for bind in host["Binds"]
            ]
        return config

    @property
    def sample_by_pid(self) -> bool:
        """Rootless on cgroup v1: the container has no cgroup of its own to read."""
        return bool(self.facts["rootless"] and self.facts["cgroup_version"] == "v1")
