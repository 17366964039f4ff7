"""One run's lifecycle: plan (manifest -> run specs), the runner (folder, job, capture, record,
seal), and live progress.

May import: capture, images, runtime, analysis, store, manifest, lockfile, util, errors.
"""
