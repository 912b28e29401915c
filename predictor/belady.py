"""Belady's MIN: the offline cache that knows every future request.

On a miss MIN compares the requested object's next use with those of the
cached objects and keeps whichever are needed soonest: it evicts the cached
objects whose next request is furthest away, and it *bypasses* (does not
admit) the requested object when that object itself is the one needed last,
including one that is never requested again. For equal-sized objects this is
optimal among all demand-fetch policies (Belady 1966; Mattson et al. 1970), so
its hit ratio bounds LRU's and S3-FIFO's from above.

For objects of different sizes exact offline optimality is NP-hard. Here the
standard approximation is used: the same furthest-next-use rule, evicting
until the new object fits, and bypassing it if any victim would be needed
before it. It is what most papers report as "Belady" for variable sizes
(Berger et al., "Practical bounds on optimal caching with variable object
sizes", 2018, show it is within a few percent of the bound on web traces),
but it is no longer a proof that nothing can do better.

Next uses are computed once with numpy; the replay keeps the cached objects'
next uses in a max-heap with lazy deletion (an entry is stale when the object
was requested again and pushed with a later next use), so each request costs
O(log n).
"""

from __future__ import annotations

import heapq
from typing import Final

import numpy as np

from predictor.replay import IntArray, ObjectTable, ReplayResult, Trace

NEVER: Final = np.iinfo(np.int64).max  # the next use of an object that is not requested again


def next_uses(keys: IntArray) -> IntArray:
    """For each position, the position of the next request for the same key (NEVER if none)."""
    positions = np.arange(len(keys), dtype=np.int64)
    order = np.lexsort((positions, keys))  # by key, then by position
    following = np.full(len(keys), NEVER, dtype=np.int64)
    if len(keys) > 1:
        same = keys[order[1:]] == keys[order[:-1]]
        following[order[:-1][same]] = order[1:][same]
    return following


def belady_hits(keys: IntArray, sizes: IntArray, capacity_bytes: int) -> bytearray:
    """Replay keys (object numbers) of the given sizes (indexed by key) through MIN; one byte per request, 1 = hit.

    Raises:
        ValueError: on a non-positive capacity.
    """
    if capacity_bytes < 1:
        raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
    following: list[int] = next_uses(keys).tolist()
    key_list: list[int] = keys.tolist()
    size_of: list[int] = sizes.tolist()
    never = int(NEVER)
    hits = bytearray(len(key_list))
    cached: dict[int, int] = {}  # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key): the furthest next use on top
    used = 0
    push, pop = heapq.heappush, heapq.heappop
    for index, key in enumerate(key_list):
        upcoming = following[index]
        if key in cached:
            hits[index] = 1
            cached[key] = upcoming
            push(heap, (-upcoming, key))
            continue
        size = size_of[key]
        if upcoming == never or size > capacity_bytes:
            continue  # bypass: never needed again, or can never fit
        if used + size > capacity_bytes:
            victims: list[tuple[int, int]] = []
            freed = 0
            admit = True
            while used + size - freed > capacity_bytes:
                negative_next, victim = heap[0]
                if cached.get(victim) != -negative_next:
                    pop(heap)  # stale: the object was requested again, or has left
                    continue
                if -negative_next < upcoming:
                    admit = False  # the new object is the one needed last: keep the cache as it is
                    break
                victims.append(pop(heap))
                freed += size_of[victim]
            if not admit:
                for entry in victims:
                    push(heap, entry)
                continue
            for _, victim in victims:
                del cached[victim]
            used -= freed
        cached[key] = upcoming
        used += size
        push(heap, (-upcoming, key))
        if len(heap) > 4 * len(cached) + 1024:  # drop stale entries so the heap stays O(cache)
            heap = [(-next_use, cached_key) for cached_key, next_use in cached.items()]
            heapq.heapify(heap)
    return hits


def replay_belady(trace: Trace, objects: ObjectTable, capacity_bytes: int) -> ReplayResult:
    """MIN over a POP trace: the hit ratio no demand-fetch cache of this size can beat (equal sizes)."""
    hits = belady_hits(trace.objects, objects.sizes, capacity_bytes)
    return ReplayResult("belady", capacity_bytes, np.frombuffer(bytes(hits), dtype=np.bool_))
