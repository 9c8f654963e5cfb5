"""The TOML config: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from roomd._errors import ConfigError
from roomd.ops.config import (
    Config,
    NamespaceConfig,
    config_to_toml,
    load_config,
)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "roomd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file(monkeypatch):
    monkeypatch.delenv("ROOMD_CONFIG", raising=False)
    config = load_config(None, {})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 3000
    assert config.server.path == "/socket.io/"
    assert config.server.ping_interval == 25.0
    assert config.server.ping_timeout == 20.0
    assert config.server.max_payload == 1_000_000
    assert config.server.connect_timeout == 45.0
    assert config.server.cors_origins == ()
    assert config.limits.outbox_messages == 1024
    assert config.limits.slow_consumer == "disconnect"
    assert config.limits.max_connections == 0
    assert config.limits.shutdown_grace == 10.0
    assert config.admin.enabled is True
    assert config.admin.group is None
    assert config.log.level == "info"
    assert config.app.module is None
    assert config.namespaces == (NamespaceConfig(name="/"),)
    assert config.source is None


@pytest.mark.parametrize("name", ["", "a/b", "..", "-x", "x" * 65, "a b"])
def test_bad_instance_names(tmp_path, name):
    path = write(tmp_path, f"[admin]\ninstance = {json.dumps(name)}\n")
    with pytest.raises(ConfigError, match="admin.instance must be"):
        load_config(str(path))


def test_full_file(tmp_path):
    path = write(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 8080
path = "/io"
ping_interval = 5
cors_origins = ["https://app.example.com"]

[limits]
slow_consumer = "drop"
max_connections = 100

[admin]
socket = "/run/x/admin.sock"
group = "wheel"
enabled = false

[log]
level = "DEBUG"

[app]
module = "myapp.main:io"

[[namespaces]]
name = "/orders"
client_join = false
rooms = ["order-*", "all"]

[[namespaces]]
name = "/chat"
client_publish = false
client_leave = true
""",
    )
    config = load_config(path, {})
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8080
    assert config.server.path == "/io/"  # normalised with a trailing slash
    assert config.server.ping_interval == 5.0 and isinstance(config.server.ping_interval, float)
    assert config.server.cors_origins == ("https://app.example.com",)
    assert config.limits.slow_consumer == "drop"
    assert config.admin == dataclasses.replace(
        config.admin, socket="/run/x/admin.sock", group="wheel", enabled=False)
    assert config.log.level == "debug"
    assert config.app.module == "myapp.main:io"
    orders, chat = config.namespaces
    assert orders == NamespaceConfig("/orders", client_join=False, client_leave=False,
                                     rooms=("order-*", "all"))
    assert chat == NamespaceConfig("/chat", client_join=True, client_leave=True,
                                   client_publish=False)
    assert config.source == path


def test_roomd_config_env(tmp_path, monkeypatch):
    path = write(tmp_path, "[server]\nport = 4000\n")
    monkeypatch.setenv("ROOMD_CONFIG", path)
    assert load_config(None, {}).server.port == 4000
    # An explicit path wins over the environment.
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 5000\n")
    assert load_config(str(other), {}).server.port == 5000


def test_overrides_win_and_none_is_skipped(tmp_path):
    path = write(tmp_path, "[server]\nport = 4000\nhost = \"::1\"\n")
    config = load_config(path, {"server.port": 4001, "server.host": None, "log.level": "debug"})
    assert config.server.port == 4001
    assert config.server.host == "::1"
    assert config.log.level == "debug"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nprot = 1\n", "unknown key 'server.prot' in {path}"),
        ("[sever]\nport = 1\n", "unknown key 'sever' in {path}"),
        ("[[namespaces]]\nname = \"/a\"\nclient_joins = true\n",
         "unknown key 'namespaces[0].client_joins' in {path}"),
        ("[server]\nport = \"80\"\n", "server.port must be an integer, got string"),
        ("[server]\nport = 1.5\n", "server.port must be an integer, got float"),
        ("[server]\nport = true\n", "server.port must be an integer, got boolean"),
        ("[server]\nping_interval = \"x\"\n", "server.ping_interval must be a number, got string"),
        ("[server]\ncors_origins = \"*\"\n", "server.cors_origins must be an array, got string"),
        ("[server]\ncors_origins = [1]\n", "server.cors_origins[0] must be a string, got integer"),
        ("[admin]\nenabled = 1\n", "admin.enabled must be a boolean, got integer"),
        ("server = 1\n", "server must be a table, got integer"),
        ("[server]\nport = 70000\n", "server.port must be between 0 and 65535, got 70000"),
        ("[server]\npath = \"io\"\n", "server.path must start with '/'"),
        ("[server]\nping_timeout = 0\n", "server.ping_timeout must be greater than 0"),
        ("[limits]\noutbox_messages = 0\n", "limits.outbox_messages must be at least 1"),
        ("[limits]\nslow_consumer = \"block\"\n",
         "limits.slow_consumer must be one of disconnect, drop"),
        ("[log]\nlevel = \"loud\"\n", "log.level must be one of debug, info"),
        ("[app]\nmodule = \"myapp\"\n", "app.module must look like 'package.module:attribute'"),
        ("[[namespaces]]\nclient_join = true\n", "namespaces[0].name is required in {path}"),
        ("[[namespaces]]\nname = \"orders\"\n", "namespaces[0].name must start with '/'"),
        ("[[namespaces]]\nname = \"/a\"\n[[namespaces]]\nname = \"/a\"\n",
         "namespaces[1].name '/a' is given twice"),
        ("[[namespaces]]\nname = \"/a\"\nrooms = \"*\"\n",
         "namespaces[0].rooms must be an array, got string"),
        ("namespaces = 3\n", "namespaces must be an array, got integer"),
        ("[recovery]\nenable = true\n", "unknown key 'recovery.enable' in {path}"),
        ("[recovery]\nmax_disconnection_duration = 0\n",
         "recovery.max_disconnection_duration must be greater than 0"),
        ("[recovery]\nmax_packets = 0\n", "recovery.max_packets must be at least 1"),
        ("[recovery]\nmax_bytes = \"1M\"\n", "recovery.max_bytes must be an integer, got string"),
        ("[[namespaces]]\nname = \"/a\"\nrecovery = 1\n",
         "namespaces[0].recovery must be a boolean, got integer"),
        ("[limits]\nhead_timeout = 0\n", "limits.head_timeout must be greater than 0"),
        ("[limits]\nmemory_budget = -1\n", "limits.memory_budget must be at least 0"),
        ("[limits]\nrooms_per_socket = 0\n", "limits.rooms_per_socket must be at least 1"),
        ("[limits]\nexempt_addresses = [\"localhost\"]\n",
         "limits.exempt_addresses[0] must be an IP address, got 'localhost'"),
        ("[server]\ntrusted_proxies = [\"10.0.0.1\", \"proxy\"]\n",
         "server.trusted_proxies[1] must be an IP address, got 'proxy'"),
        ("[limits]\nsessions_per_ip_burst = 0\n",
         "limits.sessions_per_ip_burst must be at least 1 when limits.sessions_per_ip_rate"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert message.format(path=path) in str(info.value)


def test_bad_override_names_the_key():
    with pytest.raises(ConfigError, match=r"unknown key 'server\.prot' \(override\)"):
        load_config(None, {"server.prot": 1})
    with pytest.raises(ConfigError, match="server.port must be an integer, got string"):
        load_config(None, {"server.port": "x"})


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "[server]\nport = 3000\nhost = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert path in str(info.value)
    assert "line 3" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config(str(tmp_path / "nope.toml"), {})


def test_config_to_toml_round_trips(tmp_path):
    path = write(
        tmp_path,
        """
[server]
host = "h\\"x"
cors_origins = ["*"]
[admin]
group = "adm"
[app]
module = "a.b:c"
[[namespaces]]
name = "/ü"
rooms = ["a*", "b"]
""",
    )
    config = load_config(path, {})
    text = config_to_toml(config)
    again = load_config(write(tmp_path, text), {})
    assert again == config
    assert isinstance(again, Config)
    # Unset optional values are shown as comments, and the defaults round-trip too.
    default_text = config_to_toml(load_config(None, {}))
    assert "# module is not set" in default_text
    assert load_config(write(tmp_path, default_text), {}) == load_config(None, {})


def test_recovery_section_and_per_namespace_switch(tmp_path):
    import roomd
    from roomd.ops.daemon import recovery_options, server_options

    default = load_config(None, {})
    assert default.recovery.enabled is False and recovery_options(default) is None
    path = write(
        tmp_path,
        """
[recovery]
enabled = true
max_disconnection_duration = 30
max_packets = 500
[[namespaces]]
name = "/chat"
[[namespaces]]
name = "/quiet"
recovery = false
""",
    )
    config = load_config(path, {})
    assert config.recovery.max_disconnection_duration == 30.0
    options = recovery_options(config)
    assert options is not None and options["namespaces"] == ["/chat"]
    assert options["max_packets"] == 500 and options["skip_middlewares"] is True
    io = roomd.Server(**server_options(config))
    assert io.of("/chat").adapter.recovery is not None
    assert io.of("/quiet").adapter.recovery is None
    # only one namespace switched on while the section says off
    path = write(tmp_path, "[[namespaces]]\nname = \"/a\"\nrecovery = true\n"
                           "[[namespaces]]\nname = \"/b\"\n")
    assert recovery_options(load_config(path, {}))["namespaces"] == ["/a"]
    # and the printed configuration reads back the same
    assert load_config(write(tmp_path, config_to_toml(config)), {}) == \
        dataclasses.replace(config, source=str(tmp_path / "roomd.toml"))


HASH = "$2b$04$WQTsmimxMThpBONBnY.sjuB0DV62apsDPXnfbeme8mAvXwy/1whMK"


def test_observation_tables_default_off(monkeypatch):
    monkeypatch.delenv("ROOMD_CONFIG", raising=False)
    config = load_config(None, {})
    assert not config.metrics.enabled and config.metrics.listen == "127.0.0.1:9464"
    assert not config.admin_ui.enabled and config.admin_ui.namespace == "/admin"
    assert config.admin_ui.origins == ("https://admin.socket.io",)
    assert not config.http_api.enabled and config.http_api.prefix == "/api"


def test_observation_tables(tmp_path):
    (tmp_path / "key").write_text("k" * 32)
    path = write(tmp_path, f"""
[metrics]
enabled = true
listen = "[::1]:9100"
[admin_ui]
enabled = true
password_hash = "{HASH}"
readonly = true
mode = "production"
server_id = "eu-1"
origins = ["https://admin.socket.io", "http://localhost:8080"]
[http_api]
enabled = true
listen = "0.0.0.0:3001"
prefix = "/v1"
key_file = "{tmp_path / 'key'}"
max_body = 2048
""")
    config = load_config(path, {})
    assert config.metrics.listen == "[::1]:9100"
    assert config.admin_ui.readonly and config.admin_ui.server_id == "eu-1"
    assert config.http_api.max_body == 2048 and config.http_api.prefix == "/v1"
    again = load_config(write(tmp_path, config_to_toml(config)), {})
    assert again == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("[metrics]\nlisten = \"9464\"\n", "metrics.listen must look like HOST:PORT"),
        ("[metrics]\nlisten = \"h:99999\"\n", "metrics.listen must look like HOST:PORT"),
        ("[metrics]\nport = 1\n", "unknown key 'metrics.port'"),
        ("[admin_ui]\nenabled = true\n", "admin_ui.password_hash is required"),
        ("[admin_ui]\npassword_hash = \"secret\"\n",
         "admin_ui.password_hash must be a bcrypt hash"),
        ("[admin_ui]\nmode = \"debug\"\n", "admin_ui.mode must be one of development, production"),
        ("[admin_ui]\nnamespace = \"admin\"\n", "admin_ui.namespace must start with '/'"),
        ("[admin_ui]\norigins = [\"admin.socket.io\"]\n", "admin_ui.origins[0] must be an origin"),
        ("[admin_ui]\norigins = [\"https://a.io/ui\"]\n", "admin_ui.origins[0] must be an origin"),
        (f"[admin_ui]\nenabled = true\npassword_hash = \"{HASH}\"\n"
         "[[namespaces]]\nname = \"/admin\"\n",
         "admin_ui.namespace '/admin' is also a relay namespace"),
        ("[http_api]\nenabled = true\n", "http_api.key_file is required"),
        ("[http_api]\nprefix = \"api\"\n", "http_api.prefix must start with '/'"),
        ("[http_api]\nprefix = \"/api/\"\n", "http_api.prefix must start with '/' and not end"),
        ("[http_api]\nmax_body = 0\n", "http_api.max_body must be at least 1"),
    ],
)
def test_observation_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert message in str(info.value)


def test_limits_reach_the_server(tmp_path):
    """Every [limits] key (and server.trusted_proxies) becomes the Server's option."""
    from roomd.ops.daemon import Daemon

    path = write(tmp_path, """
[server]
trusted_proxies = ["10.0.0.1"]
[limits]
outbox_bytes = 1000
memory_budget = 2000
connections_per_ip = 3
sessions_per_ip_rate = 0.5
sessions_per_ip_burst = 4
exempt_addresses = []
max_half_open = 17
head_timeout = 1.5
body_timeout = 2.5
keepalive_timeout = 3.5
send_timeout = 4.5
upgrade_timeout = 5.5
rooms_per_socket = 7
""")
    daemon = Daemon(load_config(path, {"admin.enabled": False}))
    options = daemon.server.options
    assert (options.outbox_bytes, options.memory_budget, options.connections_per_ip) == (
        1000, 2000, 3)
    assert (options.sessions_per_ip_rate, options.sessions_per_ip_burst) == (0.5, 4)
    assert options.exempt_addresses == () and options.trusted_proxies == ("10.0.0.1",)
    assert options.max_half_open == 17
    assert (options.head_timeout, options.body_timeout, options.keepalive_timeout,
            options.send_timeout, options.upgrade_timeout) == (1.5, 2.5, 3.5, 4.5, 5.5)
    assert daemon.relay is not None and daemon.relay.rooms_per_socket == 7


def test_limit_defaults_are_the_transports():
    from roomd.transport.options import EngineOptions

    limits, defaults = load_config(None, {}).limits, EngineOptions()
    for key in ("outbox_bytes", "memory_budget", "connections_per_ip", "sessions_per_ip_rate",
                "sessions_per_ip_burst", "exempt_addresses", "max_half_open", "head_timeout",
                "body_timeout", "keepalive_timeout", "send_timeout", "upgrade_timeout"):
        assert getattr(limits, key) == getattr(defaults, key), key


def test_server_checks_its_limit_arguments():
    import roomd

    with pytest.raises(TypeError, match="unexpected keyword argument 'head_timout'"):
        roomd.Server(head_timout=1)
    with pytest.raises(ConfigError, match="head_timeout must be greater than 0"):
        roomd.Server(head_timeout=0)
    with pytest.raises(ConfigError, match="memory_budget must be a number of at least 0"):
        roomd.Server(memory_budget=-5)
    assert roomd.Server(exempt_addresses=["10.0.0.9"]).options.exempt_addresses == ("10.0.0.9",)
