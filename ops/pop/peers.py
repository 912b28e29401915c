"""HTTP to the POP, GeoDNS's admin API and the predictor: plain urllib, a finite timeout, no proxy.

The peers are all on the operator's network. Any status comes back to the
caller as a :class:`Reply`; only "no answer" (and an oversized body) raises
:class:`PopError`.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

from ops.pop.process import PopRecord
from ops.pop.steps import PopError
from ops.settings import SECOND

HTTP_TIMEOUT: Final = 5 * SECOND  # one request to a POP, GeoDNS or the predictor on the operator's network
MAX_RESPONSE_BYTES: Final = 1024 * 1024  # a warm list of 1,000 URLs is about 100 KB; nothing else comes close

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PopError(f"{what} answered {self.status} with a body that is not JSON: {exc}") from None

    def error_message(self) -> str:
        """The `error.message` of a boxoffice JSON error, else the start of the body."""
        with contextlib.suppress(ValueError, UnicodeDecodeError, TypeError, AttributeError):
            return str(json.loads(self.body)["error"]["message"])
        return self.body[:200].decode("utf-8", "replace")


def http(method: str, url: str, *, body: Any = None, token: str = "", timeout: float = HTTP_TIMEOUT) -> Reply:
    """One request with a finite timeout; any status comes back, only "no answer" raises PopError."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return Reply(response.status, _read_bounded(response, url))
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, _read_bounded(exc, url))
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise PopError(f"no answer from {method} {url}: {reason}") from None


def _read_bounded(response: Any, url: str) -> bytes:
    data: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise PopError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes")
    return data


def edge_health(record: PopRecord) -> dict[str, Any]:
    reply = http("GET", record.health_url)
    if reply.status != 200:
        raise PopError(f"{record.health_url} answered {reply.status}: {reply.error_message()}")
    document = reply.json(record.health_url)
    if not isinstance(document, dict):
        raise PopError(f"{record.health_url} answered a {type(document).__name__}, not an object")
    return document
