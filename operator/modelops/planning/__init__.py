"""Pure decision code: desired objects, status, and the comparison that decides whether to write.

Nothing here performs I/O or reads a clock: inputs include ``now``. Every function is
deterministic and unit-tested exhaustively.
"""
