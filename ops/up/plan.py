"""What `boxoffice up` runs, on which ports, with which flags (pure: no processes, no sockets).

:func:`plan_stack` turns the settings into a :class:`StackPlan`: one
:class:`ServiceSpec` per child process, grouped in start stages (the origin
first; then the shards, which copy it; then the feed publisher; then the POPs,
which route to the shards; then GeoDNS, so its first health checks find the
POPs up; the predictor last, once its models are trained, so the POPs it
pushes warm lists to are already up). The supervisor starts a stage, waits
until each of its services is healthy, then starts the next. The POPs are
started with ``--predictor`` and a user secret from the start: until the
predictor answers, their hint lookups fail fast and serve empty lists.

Ports (``base_port`` 0 keeps the documented defaults of docs/architecture.md)::

    service            default                 base_port N
    origin primary     8100                    N
    shard k            8110 + k                N + 1 + k
    POP k              8080 + k on 127.0.0.(k+2)  N + 1 + S + k (S = number of regions)
    GeoDNS DNS/admin   5353 / 8053             N + 1 + 2S, + 1
    predictor          8200                    N + 3 + 2S
    feed publisher     8191 (/metrics)         N + 4 + 2S

Shards are started directly (``origin serve --role shard --region R``), not
through ``origin manager``: `up` must know every child's pid to restart it,
report it in `status` and stop it in order, and a demo must not wait for a
forecast round before the first shard exists. The shard map the manager would
publish is built here instead (:func:`shard_map_document`) and PUT to the
origin once the shards answer: every event of region R routes R's POP to
``R-1``, then the origin. A POP in another region reads that event from the
origin (rule M3 of origin/placement.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ops.localgeo import client_subnet
from ops.up.settings import UpSettings
from origin.cities import REGION_BY_ID

ZONE: Final = "boxoffice.test"
SITE: Final = f"www.{ZONE}"
ORIGIN_ROUTE: Final = "origin"  # origin.placement.ORIGIN: the last entry of every shard-map route
# The POP polls the map this often: a re-published map reaches it within it.
SHARDMAP_INTERVAL: Final = "1s"
# GeoDNS checks every POP each second and drops it after two failures, so a
# stopped POP leaves the answers within about health_interval × health_fall
# plus one timeout; clients holding the old answer keep it for geo_ttl.
GEODNS_HEALTH_INTERVAL: Final = "1s"
GEODNS_HEALTH_TIMEOUT: Final = "500ms"
GEO_TTL: Final = 5
POP_CAPACITY: Final = 2000.0
FAILOVER_BOUND_SECONDS: Final = 5.0  # health_interval × (health_fall + 1) + timeout, rounded up
# A shard answers reads only within max_lag of its upstream; the POP caches
# items for the origin's item max-age (2 s). A purchase therefore shows at a
# POP within max_lag + max-age in the worst case; usually in milliseconds
# (push invalidation).
SHARD_MAX_LAG: Final = "5s"
STALENESS_BOUND_SECONDS: Final = 5.0 + 2.0
DEFAULT_PORTS: Final = {"origin": 8100, "shard": 8110, "pop": 8080, "dns": 5353, "admin": 8053,
                        "predictor": 8200, "publisher": 8191}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One child process: how to start it and how to tell it is healthy."""

    name: str  # unique: "origin", "shard/eu-west-1", "pop/eu-west", "geodns", …
    kind: str  # origin, shard, pop, geodns, predictor, publisher
    command: tuple[str, ...]
    url: str  # where it answers (HTTP), or the DNS endpoint for geodns
    health_url: str
    address: str
    port: int
    region: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)  # on top of the parent's; secrets go here
    optional: bool = False  # when it does not come up, the stack runs without it (the predictor)

    @property
    def log_name(self) -> str:
        return self.name.replace("/", "-") + ".log"


@dataclass(frozen=True, slots=True)
class Secrets:
    shardmap_token: str
    purge_token: str
    admin_token: str
    user_secret: str


@dataclass(frozen=True, slots=True)
class StackPlan:
    stages: tuple[tuple[ServiceSpec, ...], ...]
    origin_url: str
    dns_host: str
    dns_port: int
    admin_url: str
    geodns_config: Path
    location_database: Path

    @property
    def services(self) -> tuple[ServiceSpec, ...]:
        return tuple(spec for stage in self.stages for spec in stage)

    def service(self, name: str) -> ServiceSpec:
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)


def pop_address(index: int) -> str:
    """POP k listens on 127.0.0.(k + 2): 127.0.0.1 stays the origin's, and each POP is a distinct DNS answer."""
    return f"127.0.0.{index + 2}"


def shard_id(region: str) -> str:
    return f"{region}-1"  # the manager's naming ({region}-{n}); one shard per region here


def plan_stack(
    settings: UpSettings, *, python: str, secrets: Secrets, with_predictor: bool, catalog_start: str = ""
) -> StackPlan:
    """The whole stack for `settings`; `python` runs ``-m ops.cli`` in every child.

    `catalog_start` (RFC 3339) is the demo catalog's start the predictor rebuilds when it serves
    ``predictor_models`` trained elsewhere (it then has no workload to read the catalog from).
    """
    data_dir = settings.data_dir.resolve()
    regions = settings.regions
    count = len(regions)
    if settings.base_port:
        base = settings.base_port
        ports = {"origin": base, "shard": base + 1, "pop": base + 1 + count, "dns": base + 1 + 2 * count,
                 "admin": base + 2 + 2 * count, "predictor": base + 3 + 2 * count,
                 "publisher": base + 4 + 2 * count}  # fmt: skip
    else:
        ports = dict(DEFAULT_PORTS)
    # -P: no working directory on sys.path. Children run in data_dir, whose origin/, geodns/ and
    # predictor/ folders would otherwise shadow the packages of those names (as namespace packages).
    boxoffice = (python, "-P", "-m", "ops.cli")
    log_level = ("--log-level", settings.log_level)
    origin_url = f"http://127.0.0.1:{ports['origin']}"

    # A DSN or Redis URL may carry a password: they go by environment, never argv (world-readable in ps).
    database = {"BOXOFFICE_ORIGIN_DATABASE": settings.postgres or f"sqlite:{data_dir / 'origin' / 'origin.db'}"}
    origin = ServiceSpec(
        name="origin", kind="origin", address="127.0.0.1", port=ports["origin"], url=origin_url,
        health_url=f"{origin_url}/v1/health",
        command=(*boxoffice, "origin", "serve", "--host", "127.0.0.1", "--port", str(ports["origin"]),
                 "--seed-demo", "--demo-seed", str(settings.demo_seed), "--demo-events", str(settings.demo_events),
                 "--demo-venues", str(settings.demo_venues), "--public-url", origin_url,
                 "--shardmap-file", str(data_dir / "origin" / "shardmap.json"), "--no-access-log", *log_level),
        environment={"BOXOFFICE_ORIGIN_SHARDMAP_TOKEN": secrets.shardmap_token, **database},
    )  # fmt: skip

    shards: list[ServiceSpec] = []
    for index, region in enumerate(regions):
        identifier = shard_id(region)
        port = ports["shard"] + index
        url = f"http://127.0.0.1:{port}"
        shards.append(ServiceSpec(
            name=f"shard/{identifier}", kind="shard", address="127.0.0.1", port=port, url=url, region=region,
            health_url=f"{url}/v1/health",
            command=(*boxoffice, "origin", "serve", "--role", "shard", "--shard-id", identifier,
                     "--region", region, "--upstream", origin_url, "--host", "127.0.0.1", "--port", str(port),
                     "--database", f"sqlite:{data_dir / 'shards' / identifier / 'shard.db'}",
                     "--node-id", identifier.replace("-", "_"), "--max-lag", SHARD_MAX_LAG,
                     "--no-access-log", *log_level),
        ))  # fmt: skip

    sidecars: list[ServiceSpec] = []
    predictor_url = f"http://127.0.0.1:{ports['predictor']}"
    predictor: ServiceSpec | None = None
    if with_predictor:
        if settings.predictor_models is not None:  # models trained elsewhere: the demo catalog, rebuilt
            sources: tuple[str, ...] = ("--models", str(settings.predictor_models.resolve()),
                                        "--catalog-seed", str(settings.demo_seed),
                                        "--catalog-venues", str(settings.demo_venues),
                                        "--catalog-events", str(settings.demo_events))  # fmt: skip
            if catalog_start:
                sources += ("--catalog-start", catalog_start)
        else:  # what ops.up.training writes; its log up to now is replayed, so the demo has live users
            sources = ("--models", str(data_dir / "predictor" / "models"),
                       "--workload", str(data_dir / "predictor" / "workload"), "--replay-workload")  # fmt: skip
        pops_flag = ",".join(
            f"{region}@{region}=http://{pop_address(index)}:{ports['pop'] + index}"
            for index, region in enumerate(regions)
        )
        predictor = ServiceSpec(
            name="predictor", kind="predictor", address="127.0.0.1", port=ports["predictor"], url=predictor_url,
            health_url=f"{predictor_url}/v1/health", optional=True,
            command=(*boxoffice, "predictor", "serve", "--listen", f"127.0.0.1:{ports['predictor']}", *sources,
                     "--pops", pops_flag, *log_level),
            environment={"BOXOFFICE_PREDICTOR_SERVE_WARM_TOKEN": secrets.purge_token},
        )  # fmt: skip
    if settings.redis:
        metrics = f"http://127.0.0.1:{ports['publisher']}"
        sidecars.append(ServiceSpec(
            name="publisher", kind="publisher", address="127.0.0.1", port=ports["publisher"], url=metrics,
            health_url=f"{metrics}/v1/health",
            environment={"BOXOFFICE_PUBLISHER_REDIS": settings.redis},
            command=(*boxoffice, "origin", "publish", "--upstream", origin_url, "--source", "origin",
                     "--host", "127.0.0.1", "--port", str(ports["publisher"]), *log_level),
        ))  # fmt: skip

    pops: list[ServiceSpec] = []
    for index, region in enumerate(regions):
        address, port = pop_address(index), ports["pop"] + index
        url = f"http://{address}:{port}"
        command = [*boxoffice, "edge", "serve", "--pop", region, "--region", region, "--host", address,
                   "--port", str(port), "--upstreams", origin_url, "--shardmap-url", f"{origin_url}/v1/shardmap",
                   "--shardmap-interval", SHARDMAP_INTERVAL, "--capacity", str(POP_CAPACITY), *log_level]  # fmt: skip
        environment = {"BOXOFFICE_EDGE_PURGE_TOKEN": secrets.purge_token}
        if settings.redis:
            command += ["--feed", "redis", "--feed-source", "origin"]
            environment |= {"BOXOFFICE_EDGE_REDIS": settings.redis, "BOXOFFICE_EDGE_FEED_REDIS": settings.redis}
        if with_predictor:
            command += ["--predictor", predictor_url]
            environment["BOXOFFICE_EDGE_USER_SECRET"] = secrets.user_secret
        pops.append(ServiceSpec(
            name=f"pop/{region}", kind="pop", address=address, port=port, url=url, region=region,
            health_url=f"{url}/_edge/health", command=tuple(command), environment=environment,
        ))  # fmt: skip

    geodns_config = data_dir / "geodns" / "geodns.toml"
    admin_url = f"http://127.0.0.1:{ports['admin']}"
    geodns = ServiceSpec(
        name="geodns", kind="geodns", address=settings.dns_host, port=ports["dns"],
        url=f"dns://{settings.dns_host}:{ports['dns']}", health_url=f"{admin_url}/v1/health",
        command=(*boxoffice, "geodns", "serve", "--config", str(geodns_config)),
        environment={"BOXOFFICE_GEODNS_ADMIN_TOKEN": secrets.admin_token},
    )  # fmt: skip

    stages = [(origin,), tuple(shards)]
    if sidecars:
        stages.append(tuple(sidecars))
    stages += [tuple(pops), (geodns,)]
    if predictor is not None:
        stages.append((predictor,))
    return StackPlan(
        stages=tuple(stages), origin_url=origin_url, dns_host=settings.dns_host, dns_port=ports["dns"],
        admin_url=admin_url, geodns_config=geodns_config,
        location_database=data_dir / "geodns" / "local-cities.mmdb",
    )  # fmt: skip


def geodns_config_text(plan: StackPlan, *, log_level: str) -> str:
    """The GeoDNS config file: settings, the boxoffice.test zone, one pool of every POP (TOML)."""
    geodns = plan.service("geodns")
    pops = [spec for spec in plan.services if spec.kind == "pop"]
    admin_port = int(plan.admin_url.rpartition(":")[2])
    lines = [
        "# Written by `boxoffice up`; regenerated on every start.",
        "[geodns]",
        f"host = {_quote(geodns.address)}",
        f"port = {geodns.port}",
        'admin_host = "127.0.0.1"',
        f"admin_port = {admin_port}",
        f"geo_database = {_quote(str(plan.location_database))}",
        "answer_count = 2",
        f"geo_ttl = {GEO_TTL}",
        'nsid = "geodns-local"',
        f"health_interval = {_quote(GEODNS_HEALTH_INTERVAL)}",
        f"health_timeout = {_quote(GEODNS_HEALTH_TIMEOUT)}",
        f"log_level = {_quote(log_level)}",
        "",
        f'[zones."{ZONE}"]',
        "ttl = 300",
        'soa = { mname = "ns1", rname = "hostmaster", serial = 1, refresh = 3600, retry = 600, '
        "expire = 86400, minimum = 60 }",
        'ns = ["ns1"]',
        "records = [",
        '    { name = "ns1", type = "A", value = "127.0.0.1" },',
        '    { name = "origin", type = "A", value = "127.0.0.1" },',
        '    { name = "@", type = "TXT", value = "boxoffice local stack" },',
        "]",
        'geo = { www = "edge" }',
        "",
        "[pools.edge]",
        f"default = [{_quote(pops[0].region)}]",
    ]
    for pop in pops:
        region = REGION_BY_ID[pop.region]
        lines += [
            "",
            f"[pops.{pop.region}]",
            f"addresses = [{_quote(pop.address)}]",
            f"lat = {region.lat}",
            f"lon = {region.lon}",
            f"capacity = {POP_CAPACITY:g}",
            f"health_url = {_quote(pop.health_url)}",
        ]
    return "\n".join(lines) + "\n"


def shard_map_document(plan: StackPlan, events_by_region: Mapping[str, Sequence[str]]) -> dict[str, object]:
    """The map PUT to the origin: each region's shard mirrors that region's events, routed shard → origin."""
    shards: dict[str, object] = {}
    routes: dict[str, dict[str, list[str]]] = {}
    for spec in plan.services:
        if spec.kind != "shard":
            continue
        identifier = shard_id(spec.region)
        events = sorted(events_by_region.get(spec.region, ()))
        shards[identifier] = {"region": spec.region, "url": spec.url, "events": events, "healthy": True}
        for event_id in events:
            routes.setdefault(event_id, {})[spec.region] = [identifier, ORIGIN_ROUTE]
    return {"origin": {"url": plan.origin_url}, "shards": shards, "events": routes}


def try_lines(
    plan: StackPlan,
    *,
    predictor_up: bool = False,
    demo_user: str = "",
    demo_user_hinted: bool = False,
    sample_event: Mapping[str, str] | None = None,
) -> list[str]:
    """What `up` prints once everything is healthy: dig per region, curl through a POP, the demo page.

    With the predictor up, also its hints (for `demo_user`, a consenting user of its workload, who has
    hints now when `demo_user_hinted`), warm list and forecast.
    """
    pops = [spec for spec in plan.services if spec.kind == "pop"]
    lines = ["Try:"]
    for pop in pops:
        lines.append(
            f"  dig @{plan.dns_host} -p {plan.dns_port} {SITE} +subnet={client_subnet(pop.region)}"
            f"   # a client in {REGION_BY_ID[pop.region].name} -> {pop.address}"
        )
    first = pops[0]
    event = (sample_event or {}).get(first.region, "")
    # the demo catalog numbers an event's items itm-NNNNNN-01, -02, … (origin/catalog.py)
    item = f"itm-{event[4:]}-01" if event.startswith("evt-") else "ITEM_ID"
    lines += [
        f"  curl -i {first.url}/v1/events?region={first.region}",
        f"  curl -i {first.url}/v1/items/{item}      # twice: X-Cache MISS, then HIT (served by its shard)",
        f"  curl {first.url}/_edge/health",
        f"  demo page: {first.url}/"
        + (f"   # log in as {demo_user} and consent" if demo_user and predictor_up else "")
        + (" (the predictor has hints for them)" if demo_user_hinted and predictor_up else ""),
    ]
    predictors = [spec for spec in plan.services if spec.kind == "predictor"]
    if predictors and predictor_up:
        url = predictors[0].url
        lines += [
            f"  curl {url}/v1/hints/{demo_user or 'USER_ID'}   # a user's prefetch hints",
            f"  curl {url}/v1/warm/{first.region}   # what the predictor warms {first.name} with",
            f"  curl {url}/v1/forecast   # demand per region and event",
        ]
    lines.append(
        "  boxoffice status" + ("" if _is_default(plan) else f" --data-dir {plan.geodns_config.parent.parent}")
    )
    return lines


def _is_default(plan: StackPlan) -> bool:
    return plan.geodns_config.parent.parent == Path("var/stack").resolve()


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
