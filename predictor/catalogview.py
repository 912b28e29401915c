"""The demo catalog as flat numpy arrays, the shape the workload generator needs.

:func:`catalog_arrays` reads an :class:`origin.catalog.Catalog` once and turns
its events and items into parallel arrays indexed by an event number (the
catalog's order) and an item number (items stay grouped by event, in catalog
order, so an event's items are the slice ``item_start[e] : item_start[e] +
item_count[e]``). Regions, genres and artists become small integer codes. Times
are seconds relative to the workload's start, as floats.

Popularity is re-derived from the catalog's own ranking: the event with the
largest ``popularity`` has rank 1, and the workload weights rank ``r`` by
``r ** -zipf_exponent``. With the default exponent of 0.8 that reproduces the
catalog's weights; another exponent keeps the catalog's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from origin.catalog import Catalog
from origin.cities import REGION_BY_ID, REGIONS
from predictor.errors import WorkloadError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
StrArray = npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class CatalogArrays:
    """Parallel arrays over the catalog's events (``event_*``) and items (``item_*``)."""

    regions: tuple[str, ...]  # region codes index this tuple
    region_utc_offset_hours: IntArray  # solar time of each region's hub, as the catalog computes local times
    genres: tuple[str, ...]
    artists: tuple[str, ...]
    artist_genre: IntArray  # the genre of an artist's first event
    event_ids: tuple[str, ...]
    event_region: IntArray
    event_genre: IntArray
    event_artist: IntArray
    event_rank: IntArray  # 1 = the catalog's most popular event
    event_onsale: FloatArray  # seconds after the workload start (negative: already on sale)
    event_show: FloatArray
    item_ids: tuple[str, ...]
    item_start: IntArray  # first item number of each event
    item_count: IntArray
    venue_count_by_region: IntArray

    @property
    def event_count(self) -> int:
        return len(self.event_ids)

    def zipf_weights(self, exponent: float) -> FloatArray:
        """Event weights ``rank ** -exponent``, normalised to sum to 1."""
        weights: FloatArray = self.event_rank.astype(np.float64) ** -exponent
        normalised: FloatArray = weights / weights.sum()
        return normalised


def catalog_arrays(catalog: Catalog, start: datetime) -> CatalogArrays:
    """Flatten `catalog` into arrays, with times in seconds after `start`.

    Raises:
        WorkloadError: the catalog has no events, an event has no items, or an item's event is not in it.
    """
    if not catalog.events:
        raise WorkloadError("the catalog has no events")
    regions = REGIONS
    region_code = {region: number for number, region in enumerate(regions)}
    genres = tuple(sorted({event.genre for event in catalog.events}))
    genre_code = {genre: number for number, genre in enumerate(genres)}
    artist_code: dict[str, int] = {}
    artist_genre: list[int] = []
    for event in catalog.events:
        if event.artist not in artist_code:
            artist_code[event.artist] = len(artist_code)
            artist_genre.append(genre_code[event.genre])
    event_number = {event.id: number for number, event in enumerate(catalog.events)}
    # Rank by popularity, largest first; ties (equal weights never happen in the demo catalog) by catalog order.
    order = sorted(range(len(catalog.events)), key=lambda number: (-catalog.events[number].popularity, number))
    rank = np.empty(len(order), dtype=np.int64)
    rank[np.array(order, dtype=np.int64)] = np.arange(1, len(order) + 1, dtype=np.int64)

    item_counts = np.zeros(len(catalog.events), dtype=np.int64)
    by_event: list[list[str]] = [[] for _ in catalog.events]
    for item in catalog.items:
        if item.event_id not in event_number:
            raise WorkloadError(f"item {item.id} belongs to unknown event {item.event_id}")
        by_event[event_number[item.event_id]].append(item.id)
    item_ids = tuple(item_id for ids in by_event for item_id in ids)
    item_counts[:] = [len(ids) for ids in by_event]
    if (item_counts == 0).any():
        raise WorkloadError("every event needs at least one item")
    item_start = np.concatenate(([0], np.cumsum(item_counts)[:-1])).astype(np.int64)
    venues_by_region = np.zeros(len(regions), dtype=np.int64)
    for venue in catalog.venues:
        venues_by_region[region_code[venue.region]] += 1

    def seconds(moment: datetime) -> float:
        return (moment - start).total_seconds()

    return CatalogArrays(
        regions=regions,
        region_utc_offset_hours=np.array([round(REGION_BY_ID[r].lon / 15) for r in regions], dtype=np.int64),
        genres=genres,
        artists=tuple(artist_code),
        artist_genre=np.array(artist_genre, dtype=np.int64),
        event_ids=tuple(event.id for event in catalog.events),
        event_region=np.array([region_code[event.region] for event in catalog.events], dtype=np.int64),
        event_genre=np.array([genre_code[event.genre] for event in catalog.events], dtype=np.int64),
        event_artist=np.array([artist_code[event.artist] for event in catalog.events], dtype=np.int64),
        event_rank=rank,
        event_onsale=np.array([seconds(event.onsale_at) for event in catalog.events], dtype=np.float64),
        event_show=np.array([seconds(event.starts_at) for event in catalog.events], dtype=np.float64),
        item_ids=item_ids,
        item_start=item_start,
        item_count=item_counts,
        venue_count_by_region=venues_by_region,
    )
