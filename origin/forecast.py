"""The demand forecast the shard manager plans from: its document, validated, read from a file or a URL.

The forecast document (what the predictor serves and a file holds)::

    {"generated_at": "2026-11-01T12:00:00Z",   # RFC 3339, required
     "horizon_s": 900,                          # seconds the forecast covers, > 0, required
     "forecast": [{"region": "eu-west", "event_id": "evt-1", "requests_per_s": 120.5}, …]}

Each (region, event_id) appears at most once; ``requests_per_s`` is a finite
number ≥ 0; a missing pair means 0. Regions must be boxoffice regions; rows of
regions this manager does not place shards in are ignored (by the manager).

:func:`parse_forecast` is pure; :func:`read_forecast` is its adapter, with a
size bound and a time limit.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeGuard
from urllib.parse import urlsplit

import aiohttp

from origin.cities import REGIONS
from origin.errors import ServerError
from origin.metadata import MAX_ID_LENGTH
from origin.placement import Forecast, InvalidForecast

# A forecast is region × event rows; the demo catalog has 3,000 events in 11
# regions, so 100,000 rows is ample and still bounds a runaway predictor.
MAX_FORECAST_ROWS: Final = 100_000
MAX_FORECAST_BYTES: Final = 32 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024


class ForecastUnavailable(ServerError):
    """The forecast file or URL could not be read."""

    status = 503
    code = "forecast_unavailable"


def parse_forecast(doc: Any) -> Forecast:
    """Validate a forecast document (format in the module docstring); returns region → event → requests/s.

    Raises InvalidForecast naming the first bad field.
    """
    if not isinstance(doc, dict):
        raise InvalidForecast("the forecast must be a JSON object with generated_at, horizon_s and forecast")
    generated_at = doc.get("generated_at")
    if not isinstance(generated_at, str) or parse_time(generated_at) is None:
        raise InvalidForecast(f"generated_at must be an RFC 3339 time, got {generated_at!r}")
    horizon = doc.get("horizon_s")
    if not _finite_number(horizon) or not horizon > 0:
        raise InvalidForecast(f"horizon_s must be a number of seconds > 0, got {horizon!r}")
    rows = doc.get("forecast")
    if not isinstance(rows, list):
        raise InvalidForecast("forecast must be a list of {region, event_id, requests_per_s}")
    if len(rows) > MAX_FORECAST_ROWS:
        raise InvalidForecast(f"forecast has {len(rows)} rows; at most {MAX_FORECAST_ROWS}")
    demand: dict[str, dict[str, float]] = {}
    for index, row in enumerate(rows):
        where = f"forecast[{index}]"
        if not isinstance(row, dict):
            raise InvalidForecast(f"{where} must be an object with region, event_id, requests_per_s")
        region, event_id, rate = row.get("region"), row.get("event_id"), row.get("requests_per_s")
        if region not in REGIONS:
            raise InvalidForecast(f"{where}.region: {region!r} is not a region (known: {', '.join(REGIONS)})")
        # The ids the shard map accepts (origin.metadata): one it refused would stop every publish.
        if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH or not event_id.isprintable():
            raise InvalidForecast(f"{where}.event_id must be a printable id of 1 to {MAX_ID_LENGTH} characters")
        if not _finite_number(rate) or not rate >= 0:
            raise InvalidForecast(f"{where}.requests_per_s must be a finite number ≥ 0, got {rate!r}")
        per_region = demand.setdefault(region, {})
        if event_id in per_region:
            raise InvalidForecast(f"{where}: ({region}, {event_id}) appears twice")
        per_region[event_id] = float(rate)
    return MappingProxyType({region: MappingProxyType(rates) for region, rates in demand.items()})


def _finite_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number that is a finite float: an integer too large for a float is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # math.isfinite converts an int to a float first
        return False


async def read_forecast(source: str, session: aiohttp.ClientSession, time_limit: float) -> Forecast:
    """Read and validate the forecast from a file path or an http(s) URL.

    Raises ForecastUnavailable when it cannot be read, InvalidForecast when it is not a forecast.
    """
    if urlsplit(source).scheme in ("http", "https"):
        try:
            async with session.get(source, timeout=aiohttp.ClientTimeout(total=time_limit)) as response:
                if response.status != 200:
                    raise ForecastUnavailable(f"GET {source} answered {response.status}")
                # StreamReader.read(n) returns what has arrived so far, not n bytes: read to the end.
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(_READ_CHUNK):
                    size += len(chunk)
                    if size > MAX_FORECAST_BYTES:
                        raise InvalidForecast(f"the forecast from {source} is larger than {MAX_FORECAST_BYTES} bytes")
                    chunks.append(chunk)
                raw = b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ForecastUnavailable(f"GET {source} failed: {exc or type(exc).__name__}") from exc
    else:
        try:
            raw = await asyncio.to_thread(Path(source).read_bytes)
        except OSError as exc:
            raise ForecastUnavailable(f"cannot read forecast file {source}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FORECAST_BYTES:
        raise InvalidForecast(f"the forecast from {source} is larger than {MAX_FORECAST_BYTES} bytes")
    try:
        doc = json.loads(raw)
    # ValueError also covers integers past int()'s digit limit; RecursionError, nesting too deep.
    except (ValueError, RecursionError) as exc:
        raise InvalidForecast(f"the forecast from {source} is not JSON: {exc}") from None
    return parse_forecast(doc)


def parse_time(raw: Any) -> datetime | None:
    """An ISO 8601 / RFC 3339 time with a UTC offset, or None when `raw` is not one."""
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
