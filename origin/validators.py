"""Validators and conditional requests (RFC 9110 sections 8.8 and 13), pure.

The origin answers a conditional GET with 304 when the client's copy is
current, which is what lets edge POPs revalidate cheaply.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime


def item_etag(item_id: str, version: int) -> str:
    """A strong entity tag: the same item version has the same bytes everywhere."""
    return f'"{item_id}.v{version}"'


def http_date(moment: datetime) -> str:
    """An IMF-fixdate (RFC 9110 section 5.6.7)."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def none_match(if_none_match: str, etag: str) -> bool:
    """True when If-None-Match matches `etag` under weak comparison (section 13.1.2)."""
    candidates = [candidate.strip() for candidate in if_none_match.split(",")]
    if "*" in candidates:
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.removeprefix("W/") == opaque for candidate in candidates)


def not_modified_since(if_modified_since: str, last_modified: datetime) -> bool:
    """True when the representation has not changed since the client's date.

    Section 13.1.3: ignored (False) when the header is not a valid HTTP-date.
    HTTP dates have one-second resolution, so sub-second parts are dropped.
    """
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified.replace(microsecond=0) <= since


def is_not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, modified: datetime) -> bool:
    """Evaluate the preconditions of a GET in the order section 13.2.2 gives."""
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    if if_modified_since is not None:
        return not_modified_since(if_modified_since, modified)
    return False
