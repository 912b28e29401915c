"""The plain data the caching cores decide over: header fields, requests, responses.

:class:`Headers` is an immutable, ordered list of field lines with
case-insensitive lookup. It keeps duplicates (a cache must store every field
line it received, RFC 9111 section 3.1) and leaves combining them to whoever
reads a field, because each field has its own rule for duplicates. It refuses
lines HTTP forbids outright (RFC 9110 sections 5.1 and 5.5), so nothing built
from one can inject a header into what the adapter writes.

Times are POSIX seconds as floats, always passed in: the cores never read a
clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from edge.errors import MalformedHeader
from edge.syntax import OWS, is_token

# RFC 9110 section 5.5: CR, LF and NUL in a field value are "invalid and dangerous".
_FORBIDDEN_IN_VALUE: Final = frozenset("\r\n\x00")


class Headers:
    """An immutable sequence of (name, value) field lines.

    Names keep the case they were sent in and compare case-insensitively;
    values are stored without leading and trailing whitespace (section 5.5).
    Two `Headers` are equal when they hold the same lines in the same order,
    names compared case-insensitively.
    """

    __slots__ = ("_index", "_lines")

    _lines: tuple[tuple[str, str], ...]
    _index: dict[str, tuple[str, ...]]

    def __init__(self, lines: Iterable[tuple[str, str]] = ()) -> None:
        """Build from (name, value) pairs, in order.

        Raises:
            MalformedHeader: a name is not a token, or a value holds CR, LF or NUL.
        """
        checked: list[tuple[str, str]] = []
        index: dict[str, list[str]] = {}
        for name, value in lines:
            if not is_token(name):
                raise MalformedHeader(f"field name {name!r} is not a token")
            if not _FORBIDDEN_IN_VALUE.isdisjoint(value):
                raise MalformedHeader(f"field {name} has CR, LF or NUL in its value")
            value = value.strip(OWS)
            checked.append((name, value))
            index.setdefault(name.lower(), []).append(value)
        self._lines = tuple(checked)
        self._index = {name: tuple(values) for name, values in index.items()}

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._folded() == other._folded()

    def __hash__(self) -> int:
        return hash(self._folded())

    def __repr__(self) -> str:
        return f"Headers({list(self._lines)!r})"

    def _folded(self) -> tuple[tuple[str, str], ...]:
        return tuple((name.lower(), value) for name, value in self._lines)

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of field `name`, in the order received; () when absent."""
        return self._index.get(name.lower(), ())

    def first(self, name: str) -> str | None:
        """The first line's value of `name`, or None when absent."""
        values = self._index.get(name.lower())
        return values[0] if values else None

    def combined(self, name: str) -> str | None:
        """All lines of a list-based field joined with ", " (section 5.3), or None when absent."""
        values = self._index.get(name.lower())
        return ", ".join(values) if values else None

    def names(self) -> frozenset[str]:
        """The lower-cased names of the fields present."""
        return frozenset(self._index)

    def without(self, names: Iterable[str]) -> Headers:
        """A copy without any line whose name is in `names` (case-insensitive)."""
        dropped = {name.lower() for name in names}
        if dropped.isdisjoint(self._index):
            return self
        return Headers((name, value) for name, value in self._lines if name.lower() not in dropped)

    def with_line(self, name: str, value: str) -> Headers:
        """A copy with one more line at the end.

        Raises:
            MalformedHeader: as for the constructor.
        """
        return Headers((*self._lines, (name, value)))

    def replacing(self, name: str, value: str) -> Headers:
        """A copy where every line of `name` is replaced by one line holding `value`.

        The new line takes the place of the first old one, or goes last.

        Raises:
            MalformedHeader: as for the constructor.
        """
        folded = name.lower()
        lines: list[tuple[str, str]] = []
        placed = False
        for line_name, line_value in self._lines:
            if line_name.lower() != folded:
                lines.append((line_name, line_value))
            elif not placed:
                lines.append((name, value))
                placed = True
        if not placed:
            lines.append((name, value))
        return Headers(lines)


@dataclass(frozen=True, slots=True)
class Request:
    """What the cores need of a request: its method (case-sensitive, RFC 9110
    section 9.1) and its header fields."""

    method: str
    headers: Headers = field(default_factory=Headers)


@dataclass(frozen=True, slots=True)
class Response:
    """A response as received from upstream: status code and header fields."""

    status: int
    headers: Headers = field(default_factory=Headers)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response in the cache with the two times RFC 9111 section 4.2.3 needs.

    `request_time` is when the cache sent the request that produced it (or the
    conditional request whose 304 last refreshed it) and `response_time` when
    that response arrived; ``request_time <= response_time``. The adapter
    stores headers through `edge.freshness.headers_to_store`, which guarantees
    a Date field.
    """

    status: int
    headers: Headers
    request_time: float
    response_time: float

    @property
    def response(self) -> Response:
        """The stored status and header fields as a plain `Response`."""
        return Response(self.status, self.headers)
