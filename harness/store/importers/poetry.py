"""A hashed pip lockfile from a Poetry lock: the packages a script needs, at the lock's versions,
with the lock's own sha256 hashes, for one target Python and platform.

The lock is hostile input (it comes from a Hub repo): it is parsed as TOML from bounded bytes, its
markers are evaluated by ``packaging`` (never executed), and a dependency that is not a hashed
file from PyPI (git, URL, a local path, another index) is refused, named in one line.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError

MAX_PACKAGES = 20_000
HASH_TEXT = re.compile(r"^sha256:[0-9a-f]{64}$")
VERSION_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}$")
LEADING_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# what an import name is published as, where the two differ and the lock cannot tell
IMPORT_ALIASES = {
    "torch.utils.tensorboard": "tensorboard",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "google.protobuf": "protobuf",
}


class PoetryLockError(HarnessError):
    """A Poetry lock or pyproject that cannot give a hashed lockfile."""


@dataclass(frozen=True)
class Target:
    """The interpreter and platform whose markers decide which dependencies apply."""

    python: str = "3.9"
    python_full: str = "3.9.2"
    system: str = "Linux"
    machine: str = "x86_64"

    def environment(self) -> dict[str, str]:
        """The marker environment of ``packaging.markers.Marker.evaluate``."""
        return {
            "python_version": self.python,
            "python_full_version": self.python_full,
            "implementation_name": "cpython",
            "implementation_version": self.python_full,
            "platform_python_implementation": "CPython",
            "os_name": "posix",
            "sys_platform": self.system.lower(),
            "platform_system": self.system,
            "platform_machine": self.machine,
            "platform_release": "",
            "platform_version": "",
            "extra": "",
        }


@dataclass
class LockedPackage:
    """One package of the lock: version, every file hash, dependencies and extras."""

    name: str
    version: str
    hashes: list[str]
    dependencies: dict[str, Any]
    extras: dict[str, list[str]]
    source: dict[str, Any] | None


@dataclass
class Lockfile:
    """The result: pip lockfile lines, which packages they pin and how they were chosen."""

    packages: list[LockedPackage]
    roots: list[str]
    locked_total: int
    unresolved_imports: list[str] = field(default_factory=list)

    def text(self, header: Iterable[str]) -> str:
        """The lockfile: ``header`` comment lines, then ``name==version`` with every ``--hash``."""
        lines = [f"# {line}" if line else "#" for line in header]
        for package in sorted(self.packages, key=lambda p: p.name):
            hashes = " \\\n".join(f"    --hash={h}" for h in package.hashes)
            lines.append(f"{package.name}=={package.version} \\\n{hashes}")
        return "\n".join(lines) + "\n"

    @property
    def pins(self) -> list[str]:
        """``name==version`` of each pinned package, sorted."""
        return sorted(f"{p.name}=={p.version}" for p in self.packages)


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_toml(data: bytes, shown: str) -> dict[str, Any]:
    """TOML from bytes already read with a bound; one-line PoetryLockError when it is not TOML."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PoetryLockError(f"{shown}: not UTF-8 text") from None
    except RecursionError:
        raise PoetryLockError(f"{shown}: nested too deeply to be a lock file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PoetryLockError(f"{shown}: not valid TOML ({str(exc).splitlines()[0][:200]})") from None


def _of_type(value: Any, kind: type, default: Any) -> Any:
    return value if isinstance(value, kind) else default


def read_lock(data: dict[str, Any], shown: str) -> dict[str, LockedPackage]:
    """The packages of a parsed poetry.lock, by normalised name."""
    entries = data.get("package")
    if not isinstance(entries, list) or not entries:
        raise PoetryLockError(f"{shown}: no [[package]] entries; is this a Poetry lock file?")
    if len(entries) > MAX_PACKAGES:
        raise PoetryLockError(f"{shown}: more than {MAX_PACKAGES} packages")
    packages: dict[str, LockedPackage] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PoetryLockError(f"{shown}: a [[package]] entry without a name")
        name = normalize(entry["name"])
        version = entry.get("version")
        if not isinstance(version, str) or not VERSION_TEXT.match(version):
            raise PoetryLockError(f"{shown}: package {name}: version {str(version)[:40]!r} is not a version")
        files = _of_type(entry.get("files"), list, [])
        hashes = [f.get("hash") for f in files if isinstance(f, dict)]
        source = _of_type(entry.get("source"), dict, None)
        dependencies = _of_type(entry.get("dependencies"), dict, {})
        extras = _of_type(entry.get("extras"), dict, {})
        packages[name] = LockedPackage(
            name,
            version,
            [h for h in hashes if isinstance(h, str)],
            dependencies,
            {str(k): [str(v) for v in vs] for k, vs in extras.items() if isinstance(vs, list)},
            source,
        )
    return packages


def main_dependencies(pyproject: dict[str, Any], shown: str) -> dict[str, list[str]]:
    """The main group of a Poetry pyproject: normalised name -> extras asked for (optional ones left out)."""
    poetry = pyproject.get("tool", {}).get("poetry", {}) if isinstance(pyproject.get("tool"), dict) else {}
    declared = poetry.get("dependencies") if isinstance(poetry, dict) else None
    if not isinstance(declared, dict):
        raise PoetryLockError(f"{shown}: no [tool.poetry.dependencies]; is this a Poetry project?")
    found: dict[str, list[str]] = {}
    for name, spec in declared.items():
        if normalize(name) == "python":
            continue
        if isinstance(spec, dict) and spec.get("optional"):
            continue
        extras = spec.get("extras") if isinstance(spec, dict) else None
        found[normalize(name)] = [str(e) for e in extras] if isinstance(extras, list) else []
    return found


def python_requirement(pyproject: dict[str, Any]) -> str | None:
    """The ``python`` constraint of the main group (e.g. ``>=3.8,<3.11``), if any."""
    try:
        value = pyproject["tool"]["poetry"]["dependencies"]["python"]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _constraints(spec: Any) -> list[dict[str, Any]]:
    """A dependency's constraints as dicts (a string, a table, or a list of tables)."""
    if isinstance(spec, str):
        return [{"version": spec}]
    if isinstance(spec, dict):
        return [spec]
    if isinstance(spec, list):
        return [s for s in spec if isinstance(s, dict)]
    return []


def _applies(markers: Any, target: Target, shown: str) -> bool:
    from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName

    if not markers:
        return True
    try:
        return bool(Marker(str(markers)[:2000]).evaluate(target.environment()))
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
        raise PoetryLockError(f"{shown}: marker {str(markers)[:120]!r} cannot be read") from None


def _check_installable(package: LockedPackage, shown: str) -> None:
    if package.source is not None:
        kind = str(package.source.get("type", "unknown"))[:40]
        where = str(package.source.get("url", ""))[:120]
        raise PoetryLockError(
            f"{shown}: package {package.name} comes from {kind} {where!r}, not a hashed PyPI file: "
            "the harness cannot pin it (publish it to PyPI or drop it from the script's dependencies)"
        )
    if not package.hashes:
        raise PoetryLockError(
            f"{shown}: package {package.name}=={package.version} has no file hashes: "
            "re-lock with a Poetry that records them (`poetry lock`)"
        )
    bad = [h for h in package.hashes if not HASH_TEXT.match(h)]
    if bad:
        raise PoetryLockError(f"{shown}: package {package.name}: hash {bad[0][:80]!r} is not sha256:<64 hex>")


def closure(
    packages: Mapping[str, LockedPackage], roots: Mapping[str, list[str]], target: Target, shown: str
) -> list[LockedPackage]:
    """Every package that ``roots`` (name -> extras) need on ``target``, the roots included."""
    wanted: dict[str, set[str]] = {}
    queue = [(name, set(extras)) for name, extras in roots.items()]
    while queue:
        name, extras = queue.pop()
        package = packages.get(name)
        if package is None:
            raise PoetryLockError(f"{shown}: {name} is needed but not locked; run `poetry lock` again")
        known = wanted.get(name)
        if known is not None and extras <= known:
            continue
        wanted[name] = (known or set()) | extras
        allowed = {
            normalize(m.group(1))
            for extra in wanted[name]
            for requirement in package.extras.get(extra, [])
            if (m := LEADING_NAME.match(requirement))
        }
        for dependency, spec in package.dependencies.items():
            for constraint in _constraints(spec):
                if constraint.get("optional") and normalize(dependency) not in allowed:
                    continue
                if not _applies(constraint.get("markers"), target, shown):
                    continue
                asked = constraint.get("extras")
                queue.append((normalize(dependency), {str(e) for e in asked} if isinstance(asked, list) else set()))
    chosen = [packages[name] for name in sorted(wanted)]
    for package in chosen:
        _check_installable(package, shown)
    return chosen


def lockfile_for_script(
    lock: bytes,
    pyproject: bytes,
    imports: Iterable[str],
    target: Target = Target(),
    lock_name: str = "poetry.lock",
    pyproject_name: str = "pyproject.toml",
) -> Lockfile:
    """The hashed lockfile of what a script that imports ``imports`` needs from a Poetry lock.

    The roots are the main-group dependencies the script imports (``torch.utils.tensorboard``
    counts as tensorboard), and locked packages it imports that the main group does not name; the
    lockfile holds their dependency closure on ``target``. Imports that are neither (the
    standard library, the project's own package) are listed in ``unresolved_imports``.
    """
    import sys

    packages = read_lock(parse_toml(lock, lock_name), lock_name)
    main = main_dependencies(parse_toml(pyproject, pyproject_name), pyproject_name)
    roots: dict[str, list[str]] = {}
    unresolved: list[str] = []
    for module in sorted(set(imports)):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        candidates = [IMPORT_ALIASES[m] for m in IMPORT_ALIASES if module == m or module.startswith(m + ".")]
        candidates.append(normalize(top))
        matched = False
        for candidate in candidates:
            if candidate in main:
                roots[candidate] = main[candidate]
                matched = True
            elif candidate in packages:
                roots.setdefault(candidate, [])
                matched = True
        if not matched:
            unresolved.append(top)
    if not roots:
        raise PoetryLockError(f"{pyproject_name}: the script imports none of the main dependencies; nothing to install")
    chosen = closure(packages, roots, target, lock_name)
    return Lockfile(chosen, sorted(roots), len(packages), sorted(set(unresolved)))
