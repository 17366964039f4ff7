"""What a run produced and ran on: metric ingestion (JSONL, TensorBoard), the host-side system
sampler, GPUs (NVML), the software and hardware environment, and the session that drives them.

May import: images, runtime, analysis, store, manifest, lockfile, util, errors (the environment
capture runs a probe container in the run's image).
"""
