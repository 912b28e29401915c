"""The shard map service over real loopback sockets: GET, PUT, 304, auth, validation, restarts."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from origin.errors import StoredDataError
from origin.metadata import MAX_SHARDMAP_BODY, ShardMapService, add_shardmap_routes, validate_placement

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORIGIN_URL = "http://127.0.0.1:8100"


def placement_doc(healthy: bool = True) -> dict[str, Any]:
    routes = ["eu-west-1", "origin"] if healthy else ["origin"]
    return {
        "shards": {
            "eu-west-1": {"region": "eu-west", "url": "http://127.0.0.1:8110/", "events": ["evt-2", "evt-1", "evt-1"],
                          "healthy": healthy},
        },
        "events": {"evt-1": {"eu-west": routes, "eu-central": routes}, "evt-2": {"eu-west": routes}},
    }  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


def service_at(path: Path, clock: Clock | None = None) -> ShardMapService:
    service = ShardMapService(path, ORIGIN_URL, TOKEN, clock or Clock())
    service.load()
    return service


async def client_for(service: ShardMapService, aiohttp_client: MakeClient) -> Client:
    app = web.Application()
    add_shardmap_routes(app, service)
    return await aiohttp_client(app)


async def error_code(response: Any, status: int) -> str:
    assert response.status == status
    body = await response.json()
    assert body["error"]["status"] == status
    code: str = body["error"]["code"]
    return code


async def test_an_empty_map_routes_everything_to_the_origin(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await client_for(service_at(tmp_path / "shardmap.json"), aiohttp_client)
    response = await client.get("/v1/shardmap")
    assert response.status == 200
    doc = await response.json()
    assert doc["version"] == 0 and doc["shards"] == {} and doc["events"] == {}
    assert doc["origin"] == {"url": ORIGIN_URL}
    assert doc["generated_at"].endswith("Z")
    assert response.headers["Cache-Control"] == "public, max-age=2"
    assert not (tmp_path / "shardmap.json").exists()


async def test_put_then_get_with_etag_and_304(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    clock = Clock()
    client = await client_for(service_at(tmp_path / "shardmap.json", clock), aiohttp_client)
    put = await client.put("/v1/shardmap", json=placement_doc(), headers=AUTH)
    assert put.status == 200
    assert await put.json() == {"version": 1, "changed": True}
    response = await client.get("/v1/shardmap")
    doc = await response.json()
    assert doc["version"] == 1 and doc["generated_at"] == "2026-09-21T14:13:20Z"
    # Event lists are sorted and deduplicated; URLs lose their trailing slash.
    shard = doc["shards"]["eu-west-1"]
    assert shard == {"region": "eu-west", "url": "http://127.0.0.1:8110", "events": ["evt-1", "evt-2"], "healthy": True}
    assert doc["events"]["evt-1"] == {"eu-central": ["eu-west-1", "origin"], "eu-west": ["eu-west-1", "origin"]}
    etag = response.headers["ETag"]
    assert etag == f'"shardmap-{doc["epoch"]}-v1"'
    not_modified = await client.get("/v1/shardmap", headers={"If-None-Match": etag})
    assert not_modified.status == 304 and not_modified.headers["ETag"] == etag
    assert (await client.get("/v1/shardmap", headers={"If-None-Match": f'"shardmap-{doc["epoch"]}-v0"'})).status == 200

    # The same map again changes nothing; a different one is the next version.
    clock.now += 60
    again = await client.put("/v1/shardmap", json=placement_doc(), headers=AUTH)
    assert await again.json() == {"version": 1, "changed": False}
    assert (await client.get("/v1/shardmap", headers={"If-None-Match": etag})).status == 304
    failed_over = await client.put("/v1/shardmap", json=placement_doc(healthy=False), headers=AUTH)
    assert await failed_over.json() == {"version": 2, "changed": True}
    doc = await (await client.get("/v1/shardmap", headers={"If-None-Match": etag})).json()
    assert doc["events"]["evt-1"]["eu-west"] == ["origin"] and doc["shards"]["eu-west-1"]["healthy"] is False


async def test_put_needs_the_bearer_token(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await client_for(service_at(tmp_path / "shardmap.json"), aiohttp_client)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await client.put("/v1/shardmap", json=placement_doc(), headers=headers)
        assert await error_code(response, 401) == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await (await client.get("/v1/shardmap")).json())["version"] == 0


async def test_an_empty_token_refuses_every_put(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    service = ShardMapService(tmp_path / "shardmap.json", ORIGIN_URL, "", Clock())
    client = await client_for(service, aiohttp_client)
    response = await client.put("/v1/shardmap", json=placement_doc(), headers={"Authorization": "Bearer "})
    assert await error_code(response, 401) == "unauthorized"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(shards=[]), "shards must be an object"),
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (lambda d: d["shards"]["eu-west-1"].pop("url"), "shards['eu-west-1'].url is required"),
        (lambda d: d["shards"]["eu-west-1"].update(url="ftp://x"), "http(s) URL"),
        (lambda d: d["shards"]["eu-west-1"].update(healthy="yes"), "healthy must be true or false"),
        (lambda d: d["shards"]["eu-west-1"].update(events="evt-1"), "events must be a list"),
        (lambda d: d["events"]["evt-1"].update({"eu-west": ["eu-west-1"]}), "ending with 'origin'"),
        (lambda d: d["events"]["evt-1"].update({"eu-west": ["eu-west-9", "origin"]}), "'eu-west-9', which is not"),
        (lambda d: d["events"]["evt-1"].update({"eu-west": ["eu-west-1", "eu-west-1", "origin"]}), "twice"),
        (lambda d: d["events"].update({"evt-3": {"eu-west": ["eu-west-1", "origin"]}}), "does not mirror 'evt-3'"),
        (lambda d: d.update(origin={"url": 5}), "origin.url"),
        (lambda d: d["shards"].update({"origin": d["shards"]["eu-west-1"]}), "reserved"),
    ],
)
async def test_bad_maps_get_a_precise_400(
    tmp_path: Path, aiohttp_client: MakeClient, mutate: Callable[[dict[str, Any]], Any], needle: str
) -> None:
    client = await client_for(service_at(tmp_path / "shardmap.json"), aiohttp_client)
    doc = placement_doc()
    mutate(doc)
    response = await client.put("/v1/shardmap", json=doc, headers=AUTH)
    assert await error_code(response, 400) == "invalid_shardmap"
    assert needle in (await response.json())["error"]["message"]
    assert not (tmp_path / "shardmap.json").exists()


async def test_non_json_and_oversized_bodies_are_refused(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await client_for(service_at(tmp_path / "shardmap.json"), aiohttp_client)
    response = await client.put("/v1/shardmap", data=b"{nope", headers=AUTH)
    assert await error_code(response, 400) == "invalid_shardmap"
    response = await client.put("/v1/shardmap", data=io.BytesIO(b" " * (MAX_SHARDMAP_BODY + 1)), headers=AUTH)
    assert await error_code(response, 413) == "request_entity_too_large"


async def test_if_match_guards_against_a_lost_update(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await client_for(service_at(tmp_path / "shardmap.json"), aiohttp_client)
    v0 = (await client.get("/v1/shardmap")).headers["ETag"]
    first = await client.put("/v1/shardmap", json=placement_doc(), headers={**AUTH, "If-Match": v0})
    assert first.status == 200
    stale = await client.put("/v1/shardmap", json=placement_doc(False), headers={**AUTH, "If-Match": v0})
    assert await error_code(stale, 412) == "precondition_failed"


async def test_the_map_survives_a_restart(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    path = tmp_path / "data" / "shardmap.json"
    client = await client_for(service_at(path), aiohttp_client)
    await client.put(
        "/v1/shardmap", json={**placement_doc(), "origin": {"url": "http://origin.test:8100"}}, headers=AUTH
    )
    before = await (await client.get("/v1/shardmap")).json()
    assert [p.name for p in path.parent.iterdir()] == ["shardmap.json"]  # no temporary file left behind

    restarted = service_at(path)
    assert restarted.current.version == 1
    client = await client_for(restarted, aiohttp_client)
    after = await (await client.get("/v1/shardmap")).json()
    assert after == before and after["origin"] == {"url": "http://origin.test:8100"}
    # Versions keep counting from the stored one.
    put = await client.put("/v1/shardmap", json=placement_doc(healthy=False), headers=AUTH)
    assert (await put.json())["version"] == 2


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "shardmap.json"
    path.write_text(json.dumps({"version": 3, "shards": {}}))
    with pytest.raises(StoredDataError, match="is not a shard map"):
        service_at(path)
    path.write_text("{")
    with pytest.raises(StoredDataError, match="is not a shard map"):
        service_at(path)


def test_validate_placement_normalises() -> None:
    shards, events, origin_url = validate_placement(placement_doc())
    assert shards["eu-west-1"]["events"] == ["evt-1", "evt-2"]
    assert list(events) == ["evt-1", "evt-2"] and origin_url is None
