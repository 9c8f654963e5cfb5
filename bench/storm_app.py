"""The yardstick's bench app (bench/app.py) as bench/storm.py's variants need it.

``ROOMD_STORM_TRANSPORTS``: "websocket" (the default, as bench/app.py) or
"polling,websocket" (what the stock clients try by default: long-polling, then the
upgrade). ``ROOMD_STORM_EXEMPT=none``: no address is exempt from the per-address limits
(the defaults exempt loopback), so that a storm from distinct loopback addresses meets
them as clients from distinct internet addresses would. Run it with
``roomd serve --app bench.storm_app:io``.
"""

import os

from bench.app import make_app

_options: dict = {"transports": os.environ.get("ROOMD_STORM_TRANSPORTS", "websocket").split(",")}
if os.environ.get("ROOMD_STORM_EXEMPT") == "none":
    _options["exempt_addresses"] = ()

io = make_app(**_options)
