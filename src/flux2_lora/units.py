"""Byte units, one definition for the memory model, the trainer's measurements and the UI's limits (no torch)."""

from __future__ import annotations

GIB = 2**30
KIB_PER_GIB = 2**20  # ru_maxrss is in KiB on Linux
