"""Images: recipes and their content hashes, builds, the base bootstrap, lockfiles (pip-compile),
registries (pull by digest, push), images into Podman, and ``harness gc``.

May import: runtime (the engine clients), store, manifest, lockfile, util, errors.
A runtime never imports images: the image is prepared first and handed to the job by id.
"""
