"""The local results store and the Hub: the run folder's names (``layout``), the record
(``record``), the store (``local``), publish and pull (``hub``), the Hub page (``card``), pinned
Hub inputs (``pins``) and TensorBoard export.

May import: manifest, lockfile, util, errors. A card that carries a figure gets it drawn by its
caller (analysis is above the store).
"""
