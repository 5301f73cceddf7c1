"""Parity suites: this repository's own models as plug-ins, registered by short name.

A registered name is short for a `MODULE:NAME` and is resolved exactly like a user's (`parity.suite`):
nothing here is imported until a suite is asked for, so the cores stay model-free.
"""

from __future__ import annotations

REGISTERED = {
    "vae": "parity.suites.vae_dit:VAE",
    "dit": "parity.suites.vae_dit:DIT",
    "all": "parity.suites.vae_dit:ALL",
}
