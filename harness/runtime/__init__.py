"""How one job executes: the engine clients (the docker SDK, the Engine API over a unix socket),
the sandboxed container (docker, podman) and the host process; ``JobRequest`` in, ``JobResult`` out.

May import: store (the run folder's names, pinned inputs), manifest, lockfile, util, errors.
"""
