"""Images: content-addressed builds from images/<name>/, base-image bootstrap, provenance.

The tag of a built image is a hash of its inputs (Dockerfile and context files, lockfile, base
image ids). Unchanged inputs find the tag in the engine and never call the engine's build.
What only helps the build reach packages (a CA bundle, pip's index configuration, the locked
wheels downloaded on the host) is staged under ``.harness-build/`` for the builder stage: it is
not part of the hash, and a two-stage Dockerfile keeps it out of the final image.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from harness.errors import EngineError, HarnessError, LockfileError
from harness.util.fsutil import cache_root

if TYPE_CHECKING:
    pass

from harness.runtime.engine import docker_client, engine_image_id

if TYPE_CHECKING:
    from harness.lockfile import PackageIndex

BUILD_STAGING = ".harness-build"
HASH_SCHEMA = "harness-image-v1"
BASE_IMAGE = "harness/base:bookworm"
IGNORED_NAMES = {"__pycache__", ".pytest_cache", BUILD_STAGING, ".git"}
MAX_CONTEXT_FILES = 10_000
MAX_CONTEXT_BYTES = 256 << 20
CA_ENV_VARS = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")


@dataclass
class ImageInfo:
    """What a run records about its image."""

    ref: str
    id: str
    tag: str | None = None
    content_hash: str | None = None
    cached: bool = False
    build_seconds: float = 0.0
    packages: list[str] = field(default_factory=list)
    registry_ref: str | None = None  # host/name@sha256:… when the image is (also) in a registry
    source: str = "build"  # build | local | registry: where this run's copy came from
    builder: str = "docker"  # docker | podman-reproducible (harness.images.reproducible: a rebuild gives this id)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def context_files(build_dir: Path) -> list[Path]:
    """Files of an image recipe folder that go into the build context and its hash, sorted.

    The recipe may come from a pulled record, so it is walked without following links: a
    symlink, a special file, an unusable name or a context past the size limits is refused."""
    from harness.util.safefs import walk

    def ignored(relative: str) -> bool:
        return any(part in IGNORED_NAMES for part in relative.split("/")) or relative.endswith(".pyc")

    found = walk(build_dir, max_entries=MAX_CONTEXT_FILES * 2)
    for skipped in found.skipped:
        if ignored(skipped.path):
            continue
        if skipped.reason.startswith("symlink"):
            raise HarnessError(
                f"{build_dir / skipped.path}: symlinks are not allowed in an image recipe (copy the file instead)"
            )
        raise HarnessError(f"{build_dir / skipped.path}: not allowed in an image recipe ({skipped.reason})")
    entries = [e for e in found.files if not ignored(e.relative)]
    if len(entries) > MAX_CONTEXT_FILES:
        raise HarnessError(f"{build_dir}: the image recipe has {len(entries)} files (at most {MAX_CONTEXT_FILES})")
    total = sum(e.size for e in entries)
    if total > MAX_CONTEXT_BYTES:
        raise HarnessError(
            f"{build_dir}: the image recipe holds {total} bytes (at most {MAX_CONTEXT_BYTES}); "
            "keep data and weights out of it (pin them in the manifest instead)"
        )
    return [build_dir / e.relative for e in entries]


def base_images(dockerfile: Path) -> list[str]:
    """Images named by FROM lines (ARG defaults substituted; earlier stage names skipped)."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        arg = re.match(r"(?i)^ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line)
        if arg:
            args.setdefault(arg.group(1), arg.group(2).strip("\"'"))
            continue
        match = re.match(r"(?i)^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line)
        if not match:
            continue
        image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), ""), match.group(1))
        if image not in stages and image != "scratch":
            bases.append(image)
        if match.group(2):
            stages.add(match.group(2))
    return bases


def content_hash(
    build_dir: Path,
    lockfile: Path | None,
    base_ids: dict[str, str],
    network: bool = False,
    reproducible: bool = False,
) -> str:
    """sha256 over the build inputs: recipe files, lockfile, base image ids (and a declared
    need for the network, or the reproducible builder, each of which makes a different build)."""
    digest = hashlib.sha256()
    digest.update(HASH_SCHEMA.encode())
    for path in context_files(build_dir):
        digest.update(path.relative_to(build_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    if lockfile is not None:
        digest.update(b"lockfile\0" + hashlib.sha256(lockfile.read_bytes()).digest())
    digest.update(json.dumps(base_ids, sort_keys=True).encode())
    if network:
        digest.update(b"network\0")
    if reproducible:
        digest.update(b"reproducible\0")
    return digest.hexdigest()


def reproducible_by_default() -> bool:
    """Whether a recipe that does not say is built reproducibly: where podman is installed."""
    return shutil.which("podman") is not None


def find_ca_bundle(explicit: Path | None = None) -> Path | None:
    """An extra CA bundle to give builds: ``--ca-bundle``, else SSL_CERT_FILE / PIP_CERT / REQUESTS_CA_BUNDLE, else pip's cert."""
    if explicit is not None:
        if not explicit.is_file():
            raise HarnessError(f"--ca-bundle {explicit}: no such file")
        return explicit
    for name in CA_ENV_VARS:
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    cert = _pip_config().get("cert")
    return Path(cert) if cert and Path(cert).is_file() else None


@functools.lru_cache(maxsize=1)
def _pip_config() -> dict[str, str]:
    """pip's effective configuration (``pip config list``) as key -> value, last one wins."""
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    config: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        config[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return config


def wheel_cache_dir() -> Path:
    """Where locked wheels downloaded on the host are kept between builds."""
    return cache_root() / "wheels"


# the Linux x86_64 wheels an image's glibc (Debian bullseye's is 2.31) can load, newest first
TARGET_PLATFORMS = ("manylinux_2_31_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def wheel_download_command(
    requirements: Path, target: Path, indexes: Sequence[PackageIndex] = (), python: str | None = None
) -> list[str]:
    """The ``pip download`` argv for locked requirements: pip's own configuration, plus ``indexes``.

    ``requirements`` holds only ``name==version --hash=…`` lines, so the indexes pip asks are
    those of its configuration (PyPI when there is none) and the ones given here, nothing else.
    ``python`` (e.g. ``3.9``): wheels for that CPython on Linux x86_64 instead of the host's."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--quiet",
        "-r",
        str(requirements),
        "-d",
        str(target),
    ]
    if python is not None:
        cmd += ["--only-binary=:all:", "--implementation", "cp", "--python-version", python]
        for platform in TARGET_PLATFORMS:
            cmd += ["--platform", platform]
    for index in indexes:
        cmd += index.as_args()
    return cmd


def wheel_download_commands(
    requirements: Path, target: Path, indexes: Sequence[PackageIndex], python: str | None = None
) -> list[list[str]]:
    """The download attempts, in order: pip's configuration alone, then with the lockfile's indexes."""
    attempts = [wheel_download_command(requirements, target, python=python)]
    if indexes:
        attempts.append(wheel_download_command(requirements, target, indexes, python))
    return attempts


def download_locked_wheels(lockfile: Path, log: Callable[[str], None]) -> Path:
    """Download every locked distribution on the host, hashes checked.

    pip's own configuration (the user's mirrors, wheelhouses, CA) is asked first; when it lacks a
    locked distribution, pip is asked again with the public indexes the lockfile names added (the
    CPU build of torch is on PyTorch's index, never on PyPI). Asking the user's configuration
    first keeps a build fast where a local mirror has everything and the named index is slow or
    unreachable."""
    from harness.lockfile import lockfile_python, read_lockfile

    key = hashlib.sha256(lockfile.read_bytes()).hexdigest()[:16]
    target = wheel_cache_dir() / key
    done_marker = target / ".complete"
    if done_marker.is_file():
        return target
    requirements, indexes, problems = read_lockfile(lockfile)
    if problems:
        raise LockfileError(f"{lockfile}: {problems[0]}")
    target.mkdir(parents=True, exist_ok=True)
    log(f"downloading locked packages into {target}")
    with tempfile.TemporaryDirectory(prefix="harness-wheels-") as tmp:
        plain = Path(tmp) / "requirements.txt"
        plain.write_text(
            "".join(f"{r.name}=={r.version} " + " ".join(f"--hash={h}" for h in r.hashes) + "\n" for r in requirements),
            encoding="utf-8",
        )
        for number, cmd in enumerate(wheel_download_commands(plain, target, indexes, lockfile_python(lockfile)), 1):
            if number > 1:
                log("pip's configuration lacks a locked package; again with " + ", ".join(i.url for i in indexes))
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode == 0:
                break
        else:
            tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LockfileError(f"{lockfile}: cannot download the locked packages: {tail}")
    done_marker.touch()
    return target


def stage_context(
    build_dir: Path, lockfile: Path | None, ca_bundle: Path | None, staging: Path, log: Callable[[str], None]
) -> None:
    """Copy the recipe, the lockfile and the build-only helpers into a fresh context folder."""
    for path in context_files(build_dir):
        target = staging / path.relative_to(build_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    helpers = staging / BUILD_STAGING
    (helpers / "wheels").mkdir(parents=True)
    if lockfile is not None:
        shutil.copy2(lockfile, staging / "lockfile.txt")
        for wheel in download_locked_wheels(lockfile, log).iterdir():
            if wheel.is_file() and not wheel.name.startswith("."):
                os.link(wheel, helpers / "wheels" / wheel.name) if _same_device(wheel, helpers) else shutil.copy2(
                    wheel, helpers / "wheels"
                )
    if ca_bundle is not None:
        shutil.copy2(ca_bundle, helpers / "ca.pem")
    pip_conf = configparser.ConfigParser()
    pip_conf["global"] = {"find-links": "/harness-build/wheels"}
    if ca_bundle is not None:
        pip_conf["global"]["cert"] = "/harness-build/ca.pem"
    index = _pip_config().get("index-url")
    # an index URL that carries credentials stays on the host: builder layers are kept as cache
    if index and index.startswith(("http://", "https://")) and "@" not in urlsplit(index).netloc:
        pip_conf["global"]["index-url"] = index
    with open(helpers / "pip.conf", "w") as handle:
        pip_conf.write(handle)


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def locked_packages(lockfile: Path | None) -> list[str]:
    """``name==version`` of every locked requirement."""
    if lockfile is None:
        return []
    from harness.lockfile import parse_lockfile

    return [f"{r.name}=={r.version}" for r in parse_lockfile(lockfile)[0]]


def resolve_ref(client, ref: str) -> ImageInfo:  # type: ignore[no-untyped-def]
    """An image given by digest: use the local copy, or pull it by digest (with the registry's
    credentials, see ``harness.images.registry``). One-line errors for a registry that is down, refuses
    the credentials or lacks the digest."""
    from docker.errors import APIError, ImageNotFound

    from harness.images.registry import RegistryError, auth_config, engine_message, explain_pull_failure, registry_host

    host = registry_host(ref)
    source = "local"
    try:
        image = client.images.get(ref)
    except ImageNotFound:
        if host is None:
            raise EngineError(
                f"image {ref} is not in the engine and could not be pulled: it names no registry"
            ) from None
        try:
            # pull by the full reference: the SDK's pull(repo, tag) would read the digest as a tag
            for chunk in client.api.pull(ref, auth_config=auth_config(host), stream=True, decode=True):
                if "error" in chunk:
                    raise RegistryError(explain_pull_failure(ref, str(chunk["error"]).strip()))
            image = client.images.get(ref)
        except (APIError, ImageNotFound) as exc:
            raise RegistryError(explain_pull_failure(ref, engine_message(exc))) from None
        source = "registry"
    return ImageInfo(
        ref=ref, id=image.id, tag=ref, cached=True, registry_ref=ref if host is not None else None, source=source
    )


def build_image(
    build_dir: Path,
    lockfile: Path | None,
    ca_bundle: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = lambda line: None,
    network: bool = False,
    reproducible: bool | None = None,
    check: Callable[[Any], None] | None = None,
) -> ImageInfo:
    """Build (or find) the content-addressed image of an ``images/<name>`` recipe.

    The build has no network (the locked wheels are staged on the host), unless ``network``:
    a recipe that declares ``image.network: true`` gets the host's network. ``reproducible``
    builds with harness.images.reproducible (the same inputs give the same image id; None: so
    where podman is installed, else with Docker's builder); with ``check`` it builds twice from
    scratch and hands the :class:`harness.images.reproducible.CheckResult` to ``check``."""
    import time

    base_ids: dict[str, str] = {}
    for base in dict.fromkeys(base_images(build_dir / "Dockerfile")):  # a multi-stage recipe names it twice
        base_id = engine_image_id(base)
        if base_id is None:
            suite = base.removeprefix("harness/base:")
            hint = (
                "run `harness image bootstrap`"
                if base == BASE_IMAGE
                else f"run `harness image bootstrap --suite {suite}`"
                if base == f"harness/base:{suite}" and suite.isalpha()
                else f"load or pull {base} first"
            )
            raise EngineError(f"{build_dir / 'Dockerfile'}: base image {base} is not in the engine: {hint}")
        base_ids[base] = base_id
    requested = reproducible
    reproducible = (reproducible_by_default() if requested is None else requested) or check is not None
    digest = content_hash(build_dir, lockfile, base_ids, network, reproducible)
    tag = f"harness/{build_dir.name}:{digest[:16]}"
    info = ImageInfo(ref=tag, id="", tag=tag, content_hash=digest, packages=locked_packages(lockfile))
    if reproducible:
        info.builder = "podman-reproducible"
    if not force and check is None:
        cached_id = engine_image_id(tag)
        if cached_id is not None:
            info.id, info.cached = cached_id, True
            return info
    from docker.errors import APIError, BuildError

    client = docker_client(timeout=3600)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="harness-build-") as tmp:
        staging = Path(tmp)
        stage_context(build_dir, lockfile, find_ca_bundle(ca_bundle), staging, log)
        from harness.images.ledger import built_ids_in, mark_stages, record_built

        labels = {"org.harness.content-hash": digest, "org.harness.recipe": build_dir.name}
        if reproducible:
            from harness.images import reproducible as reprobuild

            try:
                if check is not None:
                    result = reprobuild.check_build(staging, tag, base_ids, labels, network, log)
                    info.id = result.first
                    check(result)
                else:
                    info.id = reprobuild.build(staging, tag, base_ids, labels, network, log)
            except EngineError as exc:
                raise EngineError(f"{build_dir}: {exc}") from None
            record_built([info.id], build_dir.name)
            log(f"Successfully tagged {tag}")  # the line Docker's builder ends with: logs read the same
            info.build_seconds = round(time.monotonic() - started, 3)
            return info
        if requested is None:
            log("podman is not installed: Docker's builder, whose images do not rebuild to the same id")
        mark_stages(staging / "Dockerfile", build_dir.name)
        produced: list[str] = []
        try:
            stream = client.api.build(
                path=str(staging),
                tag=tag,
                network_mode="host" if network else "none",
                rm=True,
                forcerm=True,
                decode=True,
                labels=labels,
                nocache=force,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise BuildError(chunk["error"].strip(), [])
                text = (chunk.get("stream") or chunk.get("status") or "").rstrip()
                produced += built_ids_in(text + " " + str((chunk.get("aux") or {}).get("ID", "")))
                if text:
                    log(text)
        except (BuildError, APIError) as exc:
            record_built(produced, build_dir.name)  # a failed build's steps are harness images too
            message = getattr(exc, "msg", None) or str(exc)
            raise EngineError(f"{build_dir}: docker build failed: {str(message).strip().splitlines()[-1]}") from None
    info.id = client.images.get(tag).id
    record_built(produced + built_ids_in(info.id), build_dir.name)
    info.build_seconds = round(time.monotonic() - started, 3)
    return info


def bootstrap_base(
    name: str = BASE_IMAGE,
    suite: str = "bookworm",
    epoch: int = 1700000000,
    force: bool = False,
    log: Callable[[str], None] = lambda line: None,
    tarball: Path | None = None,
) -> ImageInfo:
    """Make the base image from Debian packages with mmdebstrap (no registry needed).

    With ``tarball``, the root file system is kept there, and an existing one is imported
    instead of running mmdebstrap again (CI caches it between runs)."""
    from docker.errors import ImageNotFound

    client = docker_client(timeout=600)
    if not force:
        try:
            image = client.images.get(name)
            return ImageInfo(ref=name, id=image.id, tag=name, cached=True, packages=base_packages(name))
        except ImageNotFound:
            pass
    with tempfile.TemporaryDirectory(prefix="harness-base-") as tmp:
        if tarball is not None and tarball.is_file() and not force:
            log(f"importing {tarball} (made earlier by mmdebstrap)")
        else:
            made = Path(tmp) / "base.tar"
            _mmdebstrap(suite, epoch, made, log)
            if tarball is not None:
                tarball.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(made, tarball)
            else:
                tarball = made
        from harness.images.reproducible import load_rootfs

        # loaded with a fixed creation time, not `docker import`: the same tarball, the same id
        load_rootfs(
            tarball,
            name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest",
            epoch,
            {"Env": ["LANG=C.UTF-8"], "Cmd": ["python3"]},
            f"mmdebstrap --variant=minbase {suite} (SOURCE_DATE_EPOCH={epoch})",
        )
    image = client.images.get(name)
    return ImageInfo(ref=name, id=image.id, tag=name, packages=base_packages(name))


def _mmdebstrap(suite: str, epoch: int, tarball: Path, log: Callable[[str], None]) -> None:
    """A minimal Debian root file system with Python as a tarball, its package list inside."""
    if shutil.which("mmdebstrap") is None:
        raise HarnessError(
            "mmdebstrap is not installed: `apt-get install -y mmdebstrap` (needed to make a base image without a registry)"
        )
    # the format in single quotes: in double quotes the hook's shell expands ${Package} to nothing
    hook = 'chroot "$1" dpkg-query -W -f \'${Package}=${Version}\\n\' > "$1/etc/harness-packages.txt"'
    # every package file by sha256 (the same files make the same base), and no host files: the
    # host's resolv.conf and hostname would make each bootstrap differ
    debs = 'cd "$1/var/cache/apt/archives" && sha256sum -- *.deb > "$1/etc/harness-debs.sha256"'
    host_files = 'rm -f "$1/etc/resolv.conf" "$1/etc/hostname"'
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        "--skip=essential/unlink",  # keep the essential packages' files until the hook has listed them
        f"--customize-hook={hook}",
        f"--customize-hook={debs}",
        f"--customize-hook={host_files}",
        suite,
        str(tarball),
    ]
    log(" ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise HarnessError(f"mmdebstrap failed: {tail}")


def base_packages(name: str) -> list[str]:
    """Debian package list recorded inside a bootstrapped base image."""
    client = docker_client()
    try:
        output = client.containers.run(
            name,
            ["cat", "/etc/harness-packages.txt"],
            remove=True,
            network_mode="none",
            user="65534:65534",
        )
    except Exception:  # noqa: BLE001 — no package list is a gap in provenance, never a failed build
        return []
    return output.decode().split()
