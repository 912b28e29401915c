"""`boxoffice up`: the whole stack on one machine (see ops.up.cli; plan, training, supervisor, state, traffic)."""

from __future__ import annotations

from ops.up.cli import main

__all__ = ["main"]
