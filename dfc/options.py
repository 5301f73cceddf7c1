"""Checks of option values that several commands share, each a one-line `UserError`."""

from __future__ import annotations

from dfc.errors import UserError

MAX_SEED = 2**63 - 1  # numpy's and torch's seeds are unsigned 64-bit; JAX's too


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} must be a whole number from 0 to 2**63 - 1, got {seed}")
    return seed
