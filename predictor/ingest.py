"""The body of ``POST /v1/events``: a batch of user activity, parsed and validated whole.

A batch is a JSON array of event objects, or NDJSON (one object per line).
Each event::

    {"id": "e-000123",             # required: the client's unique id, 1-128 characters (retries reuse it)
     "ts": 1767571225681,           # required: ms since the epoch, or an RFC 3339 time with an offset
     "user_id": "usr-0000042",      # required: an edge user id (edge.usertoken.USER_ID_PATTERN)
     "action": "event_view",        # required: one of ACTIONS
     "event_id": "evt-000094",      # the catalog event (required except for a search)
     "item_id": "itm-000094-03",    # optional
     "session_id": 17,              # required for requests: an integer >= 0, the browsing session
     "region": "eu-west",           # optional: where the request was served (a region id), only if known
     "consent": true,               # optional: the user's answer to the profiling question, from now on
     "bot": true}                   # optional: the edge or a client labelled the user a bot

Validation is all or nothing: :func:`parse_batch` checks every event before
the caller applies any, and its error names the first bad event by index
and field, so a refused batch changed nothing and the client knows what to
fix. Unknown members are ignored (newer clients may send more).

Pure: the clock and the catalog's event ids are passed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from edge.usertoken import is_valid_user_id
from origin.cities import REGIONS
from predictor.errors import PredictorError
from predictor.features import PRESALE_ACTIONS, REQUEST_ACTIONS

# Waiting-room entries are in the workload's log but are not requests the
# features count (training's activity stream leaves them out): accepted, ignored.
IGNORED_ACTIONS: Final = frozenset({"queue_enter"})
ACTIONS: Final = REQUEST_ACTIONS | PRESALE_ACTIONS | IGNORED_ACTIONS
MAX_ID_LENGTH: Final = 128  # the origin's id bound (origin.metadata.MAX_ID_LENGTH)
NDJSON_TYPES: Final = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class BatchRefused(PredictorError, ValueError):
    """The batch breaks the format above (the peer's fault); ``status`` is 400, or 413 when too large."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    id: str
    ts_ms: int
    user_id: str
    action: str
    event_id: str | None
    item_id: str | None
    session_id: int
    region: str | None
    consent: bool | None
    bot: bool


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_events: int
    max_age_ms: int  # oldest accepted event, behind now
    max_skew_ms: int  # furthest accepted event, ahead of now


def parse_batch(
    body: bytes, content_type: str, limits: BatchLimits, known_events: Collection[str], now_ms: int
) -> list[IncomingEvent]:
    """Every event of the batch, in order, or an error naming the first problem.

    Raises:
        BatchRefused: not JSON/NDJSON, too many events (413), or an event breaks the format.
    """
    documents = _documents(body, content_type, limits.max_events)
    if not documents:
        raise BatchRefused("the batch is empty: send a JSON array or NDJSON lines of events")
    return validate_events(documents, limits, known_events, now_ms)


def validate_events(
    documents: Sequence[Any], limits: BatchLimits, known_events: Collection[str], now_ms: int
) -> list[IncomingEvent]:
    """Every decoded event object of `documents`, checked as :func:`parse_batch` checks a body's.

    The batch size is the caller's to bound (``limits.max_events`` is not applied here): the serving
    sidecar's start-up replay of a workload feeds its log through this in batches of its own choosing.

    Raises:
        BatchRefused: an event breaks the format; the message names the first one by index and field.
    """
    return [_event(doc, index, known_events, limits, now_ms) for index, doc in enumerate(documents)]


def _documents(body: bytes, content_type: str, max_events: int) -> list[Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchRefused(f"the body is not UTF-8: {exc}") from None
    media_type = content_type.split(";")[0].strip().lower()
    array = media_type not in NDJSON_TYPES and text.lstrip().startswith("[")
    if media_type == "application/json" and not array:
        raise BatchRefused("the body must be a JSON array of events (or NDJSON, sent as application/x-ndjson)")
    if array:
        document = _loads(text, "the body")
        if not isinstance(document, list):
            raise BatchRefused("the body must be a JSON array of events (or NDJSON)")
        if len(document) > max_events:
            raise BatchRefused(f"{len(document)} events in one batch; at most {max_events}", status=413)
        return document
    # only "\n" ends a line (str.splitlines also splits at U+2028 and others, which JSON strings may hold);
    # a "\r" before it is JSON whitespace
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > max_events:
        raise BatchRefused(f"{len(lines)} events in one batch; at most {max_events}", status=413)
    return [_loads(line, f"events[{index}] (line {index + 1})") for index, line in enumerate(lines)]


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BatchRefused(f"{what} is not JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _event(doc: Any, index: int, known_events: Collection[str], limits: BatchLimits, now_ms: int) -> IncomingEvent:
    where = f"events[{index}]"
    if not isinstance(doc, dict):
        raise BatchRefused(f"{where}: each event must be a JSON object")
    event_key = doc.get("id")
    if not isinstance(event_key, str) or not 0 < len(event_key) <= MAX_ID_LENGTH:
        raise BatchRefused(f"{where}.id: required, a string of 1 to {MAX_ID_LENGTH} characters (retries reuse it)")
    user_id = doc.get("user_id")
    if not isinstance(user_id, str) or not is_valid_user_id(user_id):
        raise BatchRefused(f"{where}.user_id: required, letters, digits and ._:@~- (at most 128), got {user_id!r}")
    action = doc.get("action")
    if not isinstance(action, str) or action not in ACTIONS:  # a list or object is unhashable: test the type first
        raise BatchRefused(f"{where}.action: {action!r} is not one of {', '.join(sorted(ACTIONS))}")
    ts_ms = _timestamp(doc.get("ts"), f"{where}.ts")
    if ts_ms < now_ms - limits.max_age_ms:
        raise BatchRefused(f"{where}.ts: {ts_ms} is more than {limits.max_age_ms // 1000} s old")
    if ts_ms > now_ms + limits.max_skew_ms:
        raise BatchRefused(f"{where}.ts: {ts_ms} is more than {limits.max_skew_ms // 1000} s in the future")
    event_id = _optional_id(doc, "event_id", where)
    if event_id is None and action != "search" and action not in IGNORED_ACTIONS:
        raise BatchRefused(f"{where}.event_id: required for a {action}")
    if event_id is not None and event_id not in known_events:
        raise BatchRefused(f"{where}.event_id: {event_id!r} is not in the catalog")
    session_id = doc.get("session_id", -1)
    if isinstance(session_id, bool) or not isinstance(session_id, int):
        raise BatchRefused(f"{where}.session_id: an integer, got {session_id!r}")
    if action in REQUEST_ACTIONS and session_id < 0:
        raise BatchRefused(f"{where}.session_id: required for a {action}, an integer >= 0")
    region = doc.get("region")
    if region is not None and region not in REGIONS:
        raise BatchRefused(f"{where}.region: {region!r} is not one of {', '.join(REGIONS)}")
    consent, bot = doc.get("consent"), doc.get("bot", False)
    if consent is not None and not isinstance(consent, bool):
        raise BatchRefused(f"{where}.consent: true or false, got {consent!r}")
    if not isinstance(bot, bool):
        raise BatchRefused(f"{where}.bot: true or false, got {bot!r}")
    return IncomingEvent(
        event_key, ts_ms, user_id, action, event_id, _optional_id(doc, "item_id", where), session_id,
        region, consent, bot,
    )  # fmt: skip


def _optional_id(doc: dict[str, Any], name: str, where: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise BatchRefused(f"{where}.{name}: a string of 1 to {MAX_ID_LENGTH} characters, got {value!r}")
    return value


def _timestamp(value: Any, where: str) -> int:
    """Milliseconds since the epoch from an integer (ms) or an RFC 3339 time with an offset."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return round(moment.timestamp() * 1000)
    raise BatchRefused(f"{where}: required, ms since the epoch or an RFC 3339 time with an offset, got {value!r}")
