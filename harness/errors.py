"""Exception classes. A ``HarnessError`` is bad input: the CLI prints it as one line, exit 2."""


class HarnessError(Exception):
    """Bad input or environment: one line that says what to change."""

    exit_code = 2


class ManifestError(HarnessError):
    """One or more problems in a manifest file."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class LockfileError(HarnessError):
    """A lockfile that is missing, stale, unpinned or unhashed."""


class EngineError(HarnessError):
    """The Docker engine is unreachable or refused a request."""


class StoreError(HarnessError):
    """The results store holds no such run, or a run record is unreadable."""


class SlurmError(HarnessError):
    """Slurm is unreachable or refused a request.

    ``unreachable`` says the controller (or its client commands) could not be reached at all;
    ``command`` is what was tried."""

    def __init__(self, message: str, command: str | None = None, unreachable: bool = False):
        super().__init__(message)
        self.command = command
        self.unreachable = unreachable


class HubError(HarnessError):
    """The Hub refused a request (auth, missing repo, tampered files)."""
