"""The yardstick's bench app on a Redis cluster adapter, for ``bench/cluster_bench.py``.

The app of ``bench/app.py`` (``join(room)`` acks ``true``; ``pub(room,
payload)`` emits ``msg(payload)`` to the room except the sender), but the
server shares its rooms through Redis with the classic (or sharded) protocol
of @socket.io/redis-adapter:

    ROOMD_BENCH_REDIS=redis://127.0.0.1:6379 [ROOMD_BENCH_MODE=classic] \\
        roomd serve --app bench.cluster_app:io --app-dir .

(``roomd serve``'s own ``[cluster]`` section configures only the built-in
relay app; an application passes the adapter to its Server, as here.)
"""

import os

from bench.app import make_app
from roomd.cluster import RedisAdapterFactory

io = make_app(adapter=RedisAdapterFactory(os.environ["ROOMD_BENCH_REDIS"],
                                          key=os.environ.get("ROOMD_BENCH_KEY", "socket.io"),
                                          mode=os.environ.get("ROOMD_BENCH_MODE", "classic")))
