"""Field-value syntax shared by the caching cores (RFC 9110 sections 5.6 and 8.8.3).

Small total functions over text: each either returns a parsed value or says
"not valid" with ``None``; none raises. The grammar pieces are the RFC's:
``token`` (5.6.2), ``quoted-string`` (5.6.4), comma-separated lists with
optional whitespace and empty members (5.6.1), ``delta-seconds`` (RFC 9111
section 1.2.2) and ``entity-tag`` (8.8.3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# RFC 9110 section 5.6.3: optional whitespace is SP or HTAB.
OWS: Final = " \t"

# RFC 9111 section 1.2.2: a delta-seconds value that does not fit, or any
# calculation with it that overflows, MUST be taken as 2^31.
DELTA_SECONDS_CAP: Final = 2**31

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS: Final = re.compile(r"[0-9]+")
# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
_ENTITY_TAG: Final = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*(,|\Z)')
_LIST_SEPARATOR: Final = re.compile(r"[ \t]*(,[ \t]*)*")


def is_token(text: str) -> bool:
    """True when `text` is a non-empty RFC 9110 token (section 5.6.2)."""
    return _TOKEN.fullmatch(text) is not None


def split_list(values: str | Iterable[str]) -> list[str]:
    """Split one or more list-based field values into their members.

    Commas inside quoted-strings do not split (section 5.6.4 quoted-pair
    escapes are honoured); members are trimmed of OWS and empty members are
    dropped, as section 5.6.1 requires of recipients. Several field lines are
    read as if combined with commas (section 5.3). An unterminated
    quoted-string runs to the end of its line and stays one member.
    """
    lines = [values] if isinstance(values, str) else values
    members: list[str] = []
    for line in lines:
        start = 0
        in_quotes = False
        escaped = False
        for index, char in enumerate(line):
            if escaped:
                escaped = False
            elif in_quotes:
                if char == "\\":
                    escaped = True
                elif char == '"':
                    in_quotes = False
            elif char == '"':
                in_quotes = True
            elif char == ",":
                members.append(line[start:index])
                start = index + 1
        members.append(line[start:])
    return [stripped for member in members if (stripped := member.strip(OWS))]


def unquote(text: str) -> str | None:
    """The content of `text` when it is exactly one quoted-string, else None.

    ``\\x`` quoted-pairs become ``x`` (section 5.6.4).
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    content: list[str] = []
    escaped = False
    for char in text[1:-1]:
        if escaped:
            content.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None
        else:
            content.append(char)
    if escaped:  # the closing quote was escaped: the string never ended
        return None
    return "".join(content)


def parse_delta_seconds(text: str) -> int | None:
    """A delta-seconds value (1*DIGIT), capped at 2^31; None when not one.

    Only ASCII digits count: no sign, no fraction, no other Unicode digits.
    """
    if _DIGITS.fullmatch(text) is None:
        return None
    significant = text.lstrip("0")
    # More than ten digits is certainly past the cap; int() of a huge digit
    # string is also slow and, past 4300 digits, refused by Python.
    if len(significant) > len(str(DELTA_SECONDS_CAP)):
        return DELTA_SECONDS_CAP
    return min(int(significant or "0"), DELTA_SECONDS_CAP)


@dataclass(frozen=True, slots=True)
class EntityTag:
    """An entity tag (RFC 9110 section 8.8.3): the opaque part without quotes."""

    opaque: str
    weak: bool = False

    def weakly_matches(self, other: EntityTag) -> bool:
        """Weak comparison (section 8.8.3.2): the opaque parts are equal; W/ is ignored."""
        return self.opaque == other.opaque

    def strongly_matches(self, other: EntityTag) -> bool:
        """Strong comparison (section 8.8.3.2): both strong and the opaque parts equal."""
        return not self.weak and not other.weak and self.opaque == other.opaque

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


def parse_entity_tag(text: str) -> EntityTag | None:
    """One entity tag, surrounding OWS allowed; None when `text` is not exactly one."""
    tags = parse_entity_tag_list(text)
    return tags[0] if tags is not None and len(tags) == 1 else None


def parse_entity_tag_list(values: str | Iterable[str]) -> tuple[EntityTag, ...] | None:
    """A comma-separated list of entity tags (as in If-None-Match), or None if malformed.

    Entity tags are parsed by their own grammar, not `split_list`: a backslash
    inside one is an ordinary character and a comma inside the quotes does not
    split. ``*`` is not an entity tag; callers check for it first.
    """
    lines = [values] if isinstance(values, str) else list(values)
    tags: list[EntityTag] = []
    for line in lines:
        position = _skip_separators(line, 0)
        while position < len(line):
            match = _ENTITY_TAG.match(line, position)
            if match is None:
                return None
            tags.append(EntityTag(opaque=match.group(2), weak=match.group(1) is not None))
            position = _skip_separators(line, match.end())
    return tuple(tags)


def _skip_separators(line: str, position: int) -> int:
    """The index after any OWS and empty list members starting at `position`."""
    match = _LIST_SEPARATOR.match(line, position)
    return position if match is None else match.end()
