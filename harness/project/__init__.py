"""A contributor's project: starter manifests and recipes (``harness init``) and the checks of a
submission in CI (``harness verify``).

May import: manifest, lockfile, util, errors (and ``harness.track``, copied into new recipes).
"""
