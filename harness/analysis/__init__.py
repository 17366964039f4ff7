"""Analysis over many runs: the store index, selections, tables, learning curves, plots,
aggregates (rliable), THC, equivalence tests, run diffs, the Hub repo's figure.

May import: store (read only), manifest, lockfile, util, errors.
"""
