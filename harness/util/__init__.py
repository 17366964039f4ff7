"""Ground floor: atomic writes, the hostile-safe reader, secrets, terminal behaviour, Arrow columns.

May import nothing of the project but ``harness.errors``.
"""
