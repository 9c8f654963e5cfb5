"""Fixtures shared by all tests. The client drivers live in tests/harness.py.

- ``start_server(io=None, **server_kwargs)`` -> ``Served(io, port, url)``: runs ``io.serve``
  on 127.0.0.1:0 in the test's nursery (a fresh ``roomd.Server(**server_kwargs)`` when no
  ``io`` is given). The server is cancelled when the test ends.
- ``node``: a started :class:`harness.NodeClient` (one node process, any number of sockets).
- ``py_client``: factory, ``c = await py_client()`` -> a started :class:`harness.PyClient`
  (each is one python-socketio connection); all are closed at teardown.
- ``redis_server``, ``redis_cluster``, ``node_peer``: a real redis-server, a 3-master Redis
  Cluster, Node.js Socket.IO servers with the Redis adapter (tests/cluster_harness.py).
- Every async test body runs under a deadline (default 60 s; ``@pytest.mark.deadline(s)``
  to change it, ``deadline(None)`` for none; none for tests that take a trio clock fixture),
  so a hung test fails with TooSlowError instead of eating CI's time.
"""

from __future__ import annotations

import functools
import inspect
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from cluster_harness import node_peer, redis_cluster, redis_server  # noqa: E402, F401 (fixtures)

DEFAULT_DEADLINE = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deadline(seconds): fail the trio test after this many seconds (None: never)"
    )


def _with_deadline(fn, seconds: float):
    """Wrap an async test so that its body (not its fixtures) fails after ``seconds``."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(v, trio.abc.Clock) for v in kwargs.values()):
            return await fn(*args, **kwargs)  # virtual time: no wall-clock deadline
        try:
            with trio.fail_after(seconds):
                return await fn(*args, **kwargs)
        except trio.TooSlowError as e:
            raise trio.TooSlowError(f"test exceeded its {seconds} s deadline") from e

    return wrapper


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        obj = getattr(item, "obj", None)
        if obj is None or hasattr(obj, "hypothesis") or not inspect.iscoroutinefunction(obj):
            continue
        marker = item.get_closest_marker("deadline")
        seconds = marker.args[0] if marker and marker.args else DEFAULT_DEADLINE
        if seconds is not None:
            item.obj = _with_deadline(obj, seconds)


class Served(NamedTuple):
    io: Any
    port: int
    url: str


@pytest.fixture
def start_server(nursery: trio.Nursery):
    """``served = await start_server(io=None, **server_kwargs)``."""

    async def start(io: Any = None, **server_kwargs: Any) -> Served:
        if io is None:
            import roomd

            io = roomd.Server(**server_kwargs)
        elif server_kwargs:
            raise TypeError("give either io or server keyword arguments, not both")
        port = await harness.serve(io, nursery)
        return Served(io, port, harness.url_for(port))

    return start


@pytest.fixture
async def node():
    async with harness.NodeClient() as client:
        yield client


@pytest.fixture
async def py_client():
    async with AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> harness.PyClient:
            return await stack.enter_async_context(harness.PyClient(**kwargs))

        yield make
