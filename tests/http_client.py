"""A real HTTP client for tests: the standard library's urllib, run in a worker thread.

``await request("POST", url, json_body={...}, headers={...})`` -> :class:`Reply` (status,
headers, body; ``.json()``). Every call is bounded (socket timeout and a trio deadline);
an HTTP error status is a Reply, not an exception.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import trio


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.body[:500]!r}"


def _blocking(method: str, url: str, data: bytes | None, headers: dict[str, str],
              timeout: float) -> Reply:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                         resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


async def request(method: str, url: str, *, json_body: Any = ..., data: bytes | None = None,
                  headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
    headers = dict(headers or {})
    if json_body is not ...:
        data = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    with trio.fail_after(timeout + 2):
        return await trio.to_thread.run_sync(_blocking, method, url, data, headers, timeout,
                                             abandon_on_cancel=True)
