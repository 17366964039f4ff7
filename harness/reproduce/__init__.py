"""Reproducing a published run: pull it, rebuild or pull its image, re-run it over seeds, and say
whether it reproduced (single-run comparison ``compare``, group verdicts ``group_verdict``, the
environments side by side ``environment_diff``, ``compare --against`` ``compare_groups``).

May import: run, capture, images, runtime, analysis, store, manifest, lockfile, util, errors.
"""
