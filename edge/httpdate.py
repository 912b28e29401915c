"""HTTP-date (RFC 9110 section 5.6.7): parse the three formats, generate IMF-fixdate.

Recipients must accept all three formats::

    Sun, 06 Nov 1994 08:49:37 GMT    ; IMF-fixdate
    Sunday, 06-Nov-94 08:49:37 GMT   ; obsolete RFC 850 format
    Sun Nov  6 08:49:37 1994         ; ANSI C's asctime() format

Parsing is case-insensitive, as RFC 9111 section 4.2 asks of caches, and
tolerates a one-digit day in IMF-fixdate (section 5.6.7 asks recipients to be
robust). It does not check that the weekday agrees with the date. The result is
POSIX seconds; anything that is not a valid date gives None, never an
exception, and each caller applies the RFC's rule for an invalid date (an
invalid Expires means "already expired", RFC 9111 section 5.3).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Final

from edge.syntax import OWS

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_DAY_NAMES: Final = frozenset({"mon", "tue", "wed", "thu", "fri", "sat", "sun"})
_LONG_DAY_NAMES: Final = frozenset({"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"})

_FLAGS: Final = re.ASCII | re.IGNORECASE
_TIME: Final = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_IMF_FIXDATE: Final = re.compile(
    r"(?P<weekday>[a-z]{3}), (?P<day>[0-9]{1,2}) (?P<month>[a-z]{3}) (?P<year>[0-9]{4}) " + _TIME + r" GMT",
    _FLAGS,
)
_RFC850_DATE: Final = re.compile(
    r"(?P<weekday>[a-z]{6,9}), (?P<day>[0-9]{2})-(?P<month>[a-z]{3})-(?P<year>[0-9]{2}) " + _TIME + r" GMT",
    _FLAGS,
)
_ASCTIME_DATE: Final = re.compile(
    r"(?P<weekday>[a-z]{3}) (?P<month>[a-z]{3}) (?P<day>[0-9]{2}| [0-9]) " + _TIME + r" (?P<year>[0-9]{4})",
    _FLAGS,
)

# Section 5.6.7: a two-digit year that "appears to be more than 50 years in the
# future" is the most recent past year with the same last two digits.
_TWO_DIGIT_YEAR_WINDOW: Final = 50
# Without a clock to compare with, two-digit years 70-99 are 19xx and 00-69
# are 20xx (the POSIX strptime %y convention).
_TWO_DIGIT_YEAR_PIVOT: Final = 70
_SECONDS_PER_MINUTE: Final = 60
_SECONDS_PER_HOUR: Final = 3600


def parse_http_date(text: str, *, now: float | None = None) -> int | None:
    """POSIX seconds for an HTTP-date in any of the three formats, or None.

    Args:
        text: a field value; leading and trailing OWS are ignored.
        now: the current time, used only for the two-digit years of the RFC 850
            format (section 5.6.7's 50-year rule). Without it a fixed pivot is
            used: 70-99 mean 1970-1999 and 00-69 mean 2000-2069.

    Returns:
        Whole seconds since the epoch (a leap second 60 counts as the next
        minute's first), or None when `text` is not a valid HTTP-date.
    """
    text = text.strip(OWS)
    if (match := _IMF_FIXDATE.fullmatch(text)) is not None:
        if match["weekday"].lower() not in _DAY_NAMES:
            return None
        year = int(match["year"])
    elif (match := _RFC850_DATE.fullmatch(text)) is not None:
        if match["weekday"].lower() not in _LONG_DAY_NAMES:
            return None
        year = _full_year(int(match["year"]), now)
    elif (match := _ASCTIME_DATE.fullmatch(text)) is not None:
        if match["weekday"].lower() not in _DAY_NAMES:
            return None
        year = int(match["year"])
    else:
        return None
    month = _MONTHS.get(match["month"].lower())
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if month is None or hour > 23 or minute > 59 or second > 60:
        return None
    try:
        midnight = datetime(year, month, int(match["day"]), tzinfo=UTC)
    except ValueError:  # day 0, 31 April, 29 February of a common year, year 0
        return None
    return int(midnight.timestamp()) + hour * _SECONDS_PER_HOUR + minute * _SECONDS_PER_MINUTE + second


def format_http_date(seconds: float) -> str:
    """The IMF-fixdate for POSIX `seconds` (fractions dropped), e.g. "Sun, 06 Nov 1994 08:49:37 GMT".

    Raises:
        OverflowError, ValueError, OSError: `seconds` is outside what the
            platform's gmtime can represent (years 1-9999 always work on Linux).
    """
    return formatdate(int(seconds), usegmt=True)


def _full_year(two_digits: int, now: float | None) -> int:
    """The four-digit year for an RFC 850 two-digit year (section 5.6.7)."""
    current_year = _year_of(now) if now is not None else None
    if current_year is None:
        return (1900 if two_digits >= _TWO_DIGIT_YEAR_PIVOT else 2000) + two_digits
    year = current_year - current_year % 100 + two_digits
    if year > current_year + _TWO_DIGIT_YEAR_WINDOW:
        year -= 100
    elif year <= current_year - _TWO_DIGIT_YEAR_WINDOW:
        year += 100
    return year


def _year_of(seconds: float) -> int | None:
    """The UTC year of `seconds`, or None when it is not a representable time."""
    try:
        return datetime.fromtimestamp(seconds, UTC).year
    except (OverflowError, ValueError, OSError):
        return None
