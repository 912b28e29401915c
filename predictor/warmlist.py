"""Live warm lists for POPs, and when to push them: the serving side of cache warming.

A POP's warm list names, most valuable first, the objects (an event's page,
then its items' seat maps) it should hold before demand arrives:

1. **Scheduled on-sales** opening in ``[now, now + lookahead)``: their spike
   is the demand history cannot show. Ranked by expected requests at the
   POP's region, ``popularity x region weight``, where the event's home
   region weighs 1 and every other region the away share of demand relative
   to the home share (the workload's ``home_region_share``).
2. **Events the region is requesting now** (counts over the last hour, from
   the events the sidecar ingests), ranked by count, after every on-sale.

Priorities are numbers in (0, 1] (the edge sorts by them): on-sale events in
(0.5, 1], requested events in (0, 0.5], an event's objects a hair below its
page. The list is cut to :data:`MAX_WARM_URLS` (the edge's limit).

:func:`due_onsales` and :func:`next_push_at` schedule the pushes: each
distinct on-sale time ``T`` is pushed once, at ``T - lead``; one that is
already due when the sidecar starts (``T - lead <= now < T``) is pushed
immediately. Pure: the clock and the catalog are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from origin.cities import REGIONS
from predictor.workload_config import WorkloadConfig

MAX_WARM_URLS: Final = 1_000  # edge/routes.py MAX_WARM_URLS: a larger warm request is refused
# A hot event's seat maps are its on-sale traffic; 50 covers every event of the
# demo catalog (about 6 items each, the largest a few dozen).
MAX_ITEMS_PER_EVENT: Final = 50
_HOME_SHARE: Final = WorkloadConfig().home_region_share
# One other region's demand for an event, relative to its home region's.
AWAY_WEIGHT: Final = (1 - _HOME_SHARE) / (len(REGIONS) - 1) / _HOME_SHARE
_OBJECT_STEP: Final = 1e-6  # an event's objects rank right below its page and above the next event


@dataclass(frozen=True, slots=True)
class WarmUrl:
    url: str
    priority: float


def warm_list(
    region: str,
    now_ms: int,
    lookahead_ms: int,
    events: Any,
    items_by_event: Mapping[str, Sequence[str]],
    recent_requests: Mapping[str, float],
    limit: int = MAX_WARM_URLS,
) -> list[WarmUrl]:
    """The warm list of a POP serving `region` (see the module docstring).

    Args:
        events: the catalog's facts frame (``predictor.features.EventFacts.frame``).
        items_by_event: event id -> its item ids, in catalog order.
        recent_requests: event id -> requests from `region` over the last hour.
    """
    onsale = events["onsale_ms"].to_numpy()
    opening = (onsale >= now_ms) & (onsale < now_ms + lookahead_ms)
    upcoming = events.loc[opening]
    weight = np.exp(upcoming["log_popularity"].to_numpy()) * np.where(
        upcoming["region"].to_numpy() == region, 1.0, AWAY_WEIGHT
    )
    ranked: list[tuple[str, float]] = []
    if len(upcoming):
        top = float(weight.max())
        order = np.argsort(-weight, kind="stable")
        ids = upcoming.index.to_numpy()
        ranked.extend((str(ids[i]), 0.5 + 0.5 * float(weight[i]) / top) for i in order.tolist())
    scheduled = {event for event, _ in ranked}
    busy = sorted(
        ((event, count) for event, count in recent_requests.items() if count > 0 and event not in scheduled),
        key=lambda pair: (-pair[1], pair[0]),
    )
    if busy:
        top_count = busy[0][1]
        ranked.extend((event, 0.5 * count / top_count) for event, count in busy)
    urls: list[WarmUrl] = []
    for event, priority in ranked:
        objects = [
            f"/v1/events/{event}",
            *(f"/v1/items/{item}" for item in items_by_event.get(event, ())[:MAX_ITEMS_PER_EVENT]),
        ]
        for rank, url in enumerate(objects):
            urls.append(WarmUrl(url, round(max(priority - rank * _OBJECT_STEP, _OBJECT_STEP), 7)))
            if len(urls) >= limit:
                return urls
    return urls


def due_onsales(onsale_ms: Any, now_ms: int, lead_ms: int, pushed: set[int]) -> list[int]:
    """Distinct on-sale times ``T`` with ``T - lead <= now < T`` not yet in `pushed`, earliest first."""
    times = np.unique(np.asarray(onsale_ms, dtype=np.int64))
    due = times[(times - lead_ms <= now_ms) & (times > now_ms)]
    return [int(t) for t in due.tolist() if int(t) not in pushed]


def next_push_at(onsale_ms: Any, now_ms: int, lead_ms: int) -> int | None:
    """When the next push falls due (``T - lead`` of the next on-sale not yet due), or None."""
    starts = np.asarray(onsale_ms, dtype=np.int64) - lead_ms
    later = starts[starts > now_ms]
    return int(later.min()) if len(later) else None
