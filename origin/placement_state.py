"""The shard manager's placement, kept in ``state_dir/placement.json`` between rounds and restarts.

The manager saves the placement *before* acting on it, so a manager restarted
mid-round neither re-creates shards nor reuses a shard id. The file is JSON
with a ``format`` number (:data:`STATE_FORMAT`); anything else found there is a
:class:`StateError` naming what is wrong, never a silently empty placement.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from origin.errors import ServerError
from origin.forecast import parse_time
from origin.metadata import write_atomically
from origin.placement import Placement, ShardPlacement

STATE_FILE: Final = "placement.json"
STATE_FORMAT: Final = 1


class StateError(ServerError):
    """The placement state file exists but is not a placement this manager wrote."""

    code = "invalid_state"


def placement_to_document(placement: Placement) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "next_shard_number": placement.next_shard_number,
        "shards": [
            {
                "shard_id": shard.shard_id,
                "region": shard.region,
                "created_at": shard.created_at.isoformat(),
                "events": sorted(shard.events),
                "quiet_since": {event: moment.isoformat() for event, moment in sorted(shard.quiet_since.items())},
            }
            for shard in placement.shards
        ],
    }


def placement_from_document(doc: Any) -> Placement:
    """The inverse of :func:`placement_to_document`; raises StateError naming what is wrong."""
    try:
        if doc["format"] != STATE_FORMAT:
            raise StateError(f"state format {doc['format']!r} is not {STATE_FORMAT}")
        shards = []
        for raw in doc["shards"]:
            created_at = parse_time(raw["created_at"])
            quiet = {event: parse_time(moment) for event, moment in raw["quiet_since"].items()}
            if created_at is None or any(moment is None for moment in quiet.values()):
                raise StateError(f"shard {raw['shard_id']!r} has a time that is not ISO 8601")
            events = frozenset(raw["events"])
            if not all(isinstance(event, str) for event in events) or not set(quiet) <= events:
                raise StateError(f"shard {raw['shard_id']!r} has bad events or quiet timers")
            shards.append(
                ShardPlacement(
                    str(raw["shard_id"]),
                    str(raw["region"]),
                    created_at,
                    events,
                    MappingProxyType({event: moment for event, moment in quiet.items() if moment is not None}),
                )
            )
        next_number = doc["next_shard_number"]
        if not isinstance(next_number, int) or next_number < 1:
            raise StateError(f"next_shard_number must be an integer ≥ 1, got {next_number!r}")
    except (KeyError, TypeError, AttributeError) as exc:
        raise StateError(f"the placement state is missing or mistypes {exc}") from None
    return Placement(tuple(sorted(shards, key=lambda shard: shard.shard_id)), next_number)


def load_placement(path: Path) -> Placement:
    """The saved placement, or an empty one when there is no file yet. Raises StateError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Placement()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return placement_from_document(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path} is not JSON: {exc}") from None
    except StateError as exc:
        raise StateError(f"{path}: {exc.message}") from None


def save_placement(path: Path, placement: Placement) -> None:
    write_atomically(path, json.dumps(placement_to_document(placement), indent=1).encode())
