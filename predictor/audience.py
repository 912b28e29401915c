"""The synthetic users: where they live, what they like, what they bought before.

How it works:

* **Regions.** Users live in the catalog's regions in proportion to each
  region's venues (a market-size proxy). Human users are kept sorted by region
  internally, so "the users of region g" is the slice ``region_start[g] :
  region_start[g + 1]``; their public ids come from one shuffle over humans and
  bots together, so an id says nothing about either.
* **Taste.** A user's genre affinity is a Dirichlet draw around their region's
  genre mix (k-pop fans cluster in Seoul because the catalog's k-pop does).
  Up to ``favourite_artist_slots`` favourite artists are drawn from the genres
  they like, weighted by the artists' popularity.
* **Activity and propensity.** How often a user browses is log-normal; a hidden
  buying propensity (standard normal) drives both their purchase history and,
  later, their sessions' true purchase probability, so history is an honest,
  noisy signal of intent.
* **History.** Past purchases over ``history_days`` (genre from taste, artist
  half the time a favourite), the recency that follows from them, and a count
  of past presale registrations.

:func:`pick_users` chooses who is behind a session: with ``fan_session_share``
a fan of the event's artist in the wanted region (when there is one), else a
user of that region weighted by activity times affinity to the event's genre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from predictor.catalogview import BoolArray, CatalogArrays, FloatArray, IntArray
from predictor.workload_config import DAY, WorkloadConfig

NO_ARTIST: Final = -1
AFFINITY_FLOOR: Final = 1e-6  # keeps every (region, genre) pair drawable when a tiny run has few users
HISTORY_FAVOURITE_SHARE: Final = 0.5  # past purchases that were a favourite artist's show, when the user has one
PROPENSITY_HISTORY_WEIGHT: Final = 0.8  # how strongly the hidden propensity shows in the history (log-rate per sd)


@dataclass(frozen=True, slots=True)
class Audience:
    """Humans first (sorted by region), then bots; arrays are indexed by that internal user number."""

    humans: int
    bots: int
    user_ids: tuple[str, ...]
    region: IntArray
    region_start: IntArray  # humans of region g: region_start[g] : region_start[g + 1]
    region_weight: FloatArray  # share of users (and of a region's outside demand) per region
    is_bot: BoolArray
    consent: BoolArray
    activity: FloatArray  # humans only
    affinity: FloatArray  # humans x genres, rows sum to 1
    favourites: IntArray  # humans x slots, artist codes or NO_ARTIST
    propensity: FloatArray  # humans only, standard normal
    past_purchases: IntArray
    last_purchase_age_days: FloatArray  # inf when the user never bought
    past_presale_registrations: IntArray
    history_user: IntArray
    history_time: FloatArray  # seconds relative to the window start (negative)
    history_genre: IntArray
    history_artist: IntArray
    history_region: IntArray
    # sampling helpers
    genre_cumulative: FloatArray  # humans x genres: running sum of activity * affinity over the region-sorted users
    fan_key: IntArray  # artist * regions + region, sorted
    fan_user: IntArray


def build_audience(config: WorkloadConfig, catalog: CatalogArrays, rng: np.random.Generator) -> Audience:
    """Draw the users, their tastes and histories."""
    regions = len(catalog.regions)
    genres = len(catalog.genres)
    region_weight = catalog.venue_count_by_region.astype(np.float64) + 0.5  # a region without venues still has fans
    region_weight /= region_weight.sum()
    humans = config.users
    # at least one user per region, so that every region's demand has someone to come from
    per_region = 1 + rng.multinomial(humans - regions, region_weight).astype(np.int64)
    region_start = np.concatenate(([0], np.cumsum(per_region))).astype(np.int64)
    region = np.repeat(np.arange(regions, dtype=np.int64), per_region)

    # genre mix per region from the catalog's events, smoothed so every genre has some fans everywhere
    mix = np.full((regions, genres), 0.5)
    np.add.at(mix, (catalog.event_region, catalog.event_genre), 1.0)
    mix = 0.7 * mix / mix.sum(axis=1, keepdims=True) + 0.3 * mix.sum(axis=0) / mix.sum()
    shape = config.genre_concentration * mix[region]
    affinity = rng.gamma(shape) + AFFINITY_FLOOR
    affinity /= affinity.sum(axis=1, keepdims=True)

    activity = rng.lognormal(0.0, config.user_activity_sigma, humans)
    activity /= activity.mean()
    propensity = rng.standard_normal(humans)
    favourites = _favourites(config, catalog, affinity, rng)

    history_rate = np.sqrt(activity) * np.exp(PROPENSITY_HISTORY_WEIGHT * propensity)
    past = rng.poisson(config.history_purchases_mean * history_rate / history_rate.mean()).astype(np.int64)
    history_user = np.repeat(np.arange(humans, dtype=np.int64), past)
    history_time = -rng.uniform(0.0, config.history_days * DAY, len(history_user))
    history_genre = _categorical(affinity[history_user], rng)
    history_artist = _artists_of_genres(catalog, history_genre, config.zipf_exponent, rng)
    fav_pick = favourites[history_user, rng.integers(0, favourites.shape[1], len(history_user))]
    use_favourite = (fav_pick != NO_ARTIST) & (rng.random(len(history_user)) < HISTORY_FAVOURITE_SHARE)
    history_artist = np.where(use_favourite, fav_pick, history_artist)
    history_genre = np.where(use_favourite, catalog.artist_genre[np.maximum(fav_pick, 0)], history_genre)
    away = rng.random(len(history_user)) >= config.home_region_share
    history_region = np.where(away, rng.choice(regions, len(history_user), p=region_weight), region[history_user])
    last = np.full(humans, -np.inf)
    np.maximum.at(last, history_user, history_time)
    last_age_days = -last / DAY
    presale_rate = np.sqrt(activity) * np.exp(0.5 * propensity)
    past_presale = rng.poisson(config.past_presale_registrations_mean * presale_rate / presale_rate.mean())

    bots = max(1, round(humans * config.bot_account_share))
    bot_region = rng.choice(regions, bots, p=region_weight).astype(np.int64)
    ids = rng.permutation(humans + bots) + 1
    width = max(7, len(str(humans + bots)))
    user_ids = tuple(f"usr-{number:0{width}d}" for number in ids.tolist())

    weights = activity[:, None] * affinity
    fan_users = np.repeat(np.arange(humans, dtype=np.int64), favourites.shape[1])
    fan_artists = favourites.ravel()
    keep = fan_artists != NO_ARTIST
    fan_key_unsorted = fan_artists[keep] * regions + region[fan_users[keep]]
    order = np.lexsort((fan_users[keep], fan_key_unsorted))
    return Audience(
        humans=humans,
        bots=bots,
        user_ids=user_ids,
        region=np.concatenate((region, bot_region)),
        region_start=region_start,
        region_weight=region_weight,
        is_bot=np.concatenate((np.zeros(humans, dtype=np.bool_), np.ones(bots, dtype=np.bool_))),
        consent=rng.random(humans + bots) < config.consent_rate,
        activity=activity,
        affinity=affinity,
        favourites=favourites,
        propensity=propensity,
        past_purchases=past,
        last_purchase_age_days=last_age_days,
        past_presale_registrations=past_presale.astype(np.int64),
        history_user=history_user,
        history_time=history_time,
        history_genre=history_genre,
        history_artist=history_artist,
        history_region=history_region.astype(np.int64),
        genre_cumulative=np.cumsum(weights, axis=0),
        fan_key=fan_key_unsorted[order],
        fan_user=fan_users[keep][order],
    )


def pick_users(
    audience: Audience,
    config: WorkloadConfig,
    region: IntArray,
    genre: IntArray,
    artist: IntArray,
    rng: np.random.Generator,
) -> IntArray:
    """For each session, a human in `region` who would come for an event of `genre` by `artist`.

    With ``fan_session_share`` the user is a fan of the artist living in the
    region (uniformly among them) when the region has fans; otherwise users of
    the region are weighted by activity times affinity to the genre.
    """
    count = len(region)
    chosen = np.empty(count, dtype=np.int64)
    cumulative = audience.genre_cumulative
    start, end = audience.region_start[region], audience.region_start[region + 1]
    uniform = rng.random(count)
    for code in np.unique(genre).tolist():
        rows = np.flatnonzero(genre == code)
        column = cumulative[:, code]
        base = np.where(start[rows] > 0, column[np.maximum(start[rows] - 1, 0)], 0.0)
        total = column[end[rows] - 1] - base
        picked = np.searchsorted(column, base + uniform[rows] * total, side="right")
        chosen[rows] = np.clip(picked, start[rows], end[rows] - 1)
    key = artist * len(audience.region_start[:-1]) + region
    fan_first = np.searchsorted(audience.fan_key, key, side="left")
    fan_count = np.searchsorted(audience.fan_key, key, side="right") - fan_first
    as_fan = (fan_count > 0) & (rng.random(count) < config.fan_session_share)
    offset = np.floor(rng.random(count) * np.maximum(fan_count, 1)).astype(np.int64)
    fans = (
        audience.fan_user[np.minimum(fan_first + offset, len(audience.fan_user) - 1)]
        if len(audience.fan_user)
        else chosen
    )
    return np.where(as_fan, fans, chosen)


def is_fan(audience: Audience, user: IntArray, artist: IntArray) -> BoolArray:
    """Whether each human `user` lists `artist` among their favourites."""
    result: BoolArray = (audience.favourites[user] == artist[:, None]).any(axis=1)
    return result


def _favourites(
    config: WorkloadConfig, catalog: CatalogArrays, affinity: FloatArray, rng: np.random.Generator
) -> IntArray:
    humans = affinity.shape[0]
    slots = config.favourite_artist_slots
    filled = rng.random((humans, slots)) < config.favourite_artist_rate
    owner = np.repeat(np.arange(humans, dtype=np.int64), slots)[filled.ravel()]
    genre = _categorical(affinity[owner], rng)
    favourites = np.full(humans * slots, NO_ARTIST, dtype=np.int64)
    favourites[filled.ravel()] = _artists_of_genres(catalog, genre, config.zipf_exponent, rng)
    table = favourites.reshape(humans, slots)
    # a second draw of the same artist is no second favourite
    for slot in range(1, slots):
        repeated = (table[:, :slot] == table[:, slot : slot + 1]).any(axis=1)
        table[repeated, slot] = NO_ARTIST
    return table


def _categorical(probabilities: FloatArray, rng: np.random.Generator) -> IntArray:
    """One draw per row of a row-stochastic matrix (rows need not be normalised)."""
    if probabilities.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    cumulative = np.cumsum(probabilities, axis=1)
    threshold = rng.random(probabilities.shape[0]) * cumulative[:, -1]
    drawn: IntArray = np.minimum((cumulative <= threshold[:, None]).sum(axis=1), probabilities.shape[1] - 1).astype(
        np.int64
    )
    return drawn


def _artists_of_genres(
    catalog: CatalogArrays, genre: IntArray, zipf_exponent: float, rng: np.random.Generator
) -> IntArray:
    """An artist of each given genre, weighted by the artist's total event popularity."""
    popularity = np.zeros(len(catalog.artists))
    np.add.at(popularity, catalog.event_artist, catalog.zipf_weights(zipf_exponent))
    order = np.lexsort((np.arange(len(catalog.artists)), catalog.artist_genre))
    cumulative = np.cumsum(popularity[order])
    sorted_genre = catalog.artist_genre[order]
    first = np.searchsorted(sorted_genre, genre, side="left")
    last = np.searchsorted(sorted_genre, genre, side="right") - 1
    base = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
    total = cumulative[last] - base
    picked = np.searchsorted(cumulative, base + rng.random(len(genre)) * total, side="right")
    result: IntArray = order[np.clip(picked, first, last)].astype(np.int64)
    return result
