"""Table tests for the client's sans-IO state machine (roomd.protocol.client) and the
OPEN packet reader it uses (roomd.protocol.eio.decode_open): wire messages in, events and
wire messages out, as the server's codecs are tested in test_eio.py / test_sio.py."""

from __future__ import annotations

import json

import pytest
import socketio.packet
from hypothesis import given
from hypothesis import strategies as st

from roomd._errors import Disconnected, ProtocolError
from roomd.protocol import eio, sio
from roomd.protocol.client import (
    RESERVED_EVENTS,
    AckReceived,
    ClientProtocol,
    ClientState,
    Closed,
    Connected,
    ConnectFailed,
    EventReceived,
    NamespaceDisconnected,
    NamespaceState,
    Opened,
)

PH0 = '{"_placeholder":true,"num":0}'
OPEN_INFO = {"sid": "eio1", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000,
             "maxPayload": 1000000}
OPEN = "0" + json.dumps(OPEN_INFO)
NO_SID = "CONNECT packet without a sid (a Socket.IO v2 server?)"


def parse_error(detail: str) -> list:
    return [Closed("parse error", detail)]


def opened() -> ClientProtocol:
    p = ClientProtocol()
    assert p.receive_message(OPEN) == [Opened(eio.decode_open(eio.decode_packet(OPEN)))]
    return p


def connected(namespace: str = "/") -> ClientProtocol:
    p = opened()
    p.connect(namespace)
    p.frames_to_send()
    prefix = "" if namespace == "/" else namespace + ","
    assert p.receive_message(f'40{prefix}{{"sid":"sock1"}}') == [Connected(namespace, "sock1")]
    return p


def feed(p: ClientProtocol, messages: list) -> list:
    events = []
    for message in messages:
        events += p.receive_message(message)
    return events


# ---- decode_open

OPEN_GOOD = [
    (OPEN, eio.OpenInfo("eio1", (), 25.0, 20.0, 1000000)),
    ('0{"sid":"a","upgrades":["websocket"],"pingInterval":300,"pingTimeout":200}',
     eio.OpenInfo("a", ("websocket",), 0.3, 0.2, 0)),
    ('0{"sid":"a","pingInterval":1.5,"pingTimeout":2,"maxPayload":0,"extra":true}',
     eio.OpenInfo("a", (), 0.0015, 0.002, 0)),
]

OPEN_BAD = [
    ('0{"upgrades":[],"pingInterval":1,"pingTimeout":1}', "sid must be a non-empty string"),
    ('0{"sid":"","pingInterval":1,"pingTimeout":1}', "sid must be a non-empty string"),
    ('0{"sid":7,"pingInterval":1,"pingTimeout":1}', "sid must be a non-empty string"),
    ('0{"sid":"a","pingTimeout":1}', "pingInterval must be a positive number"),
    ('0{"sid":"a","pingInterval":0,"pingTimeout":1}', "pingInterval must be a positive number"),
    ('0{"sid":"a","pingInterval":"5","pingTimeout":1}', "pingInterval must be a positive"),
    ('0{"sid":"a","pingInterval":true,"pingTimeout":1}', "pingInterval must be a positive"),
    ('0{"sid":"a","pingInterval":1e12,"pingTimeout":1}', "pingInterval must be a positive"),
    ('0{"sid":"a","pingInterval":1,"pingTimeout":-1}', "pingTimeout must be a positive"),
    ('0{"sid":"a","pingInterval":1,"pingTimeout":1,"upgrades":"websocket"}',
     "upgrades must be a list of strings"),
    ('0{"sid":"a","pingInterval":1,"pingTimeout":1,"maxPayload":-5}',
     "maxPayload must be a non-negative integer"),
    ('0{"sid":"a","pingInterval":1,"pingTimeout":1,"maxPayload":1.5}',
     "maxPayload must be a non-negative integer"),
]


@pytest.mark.parametrize(("frame", "info"), OPEN_GOOD)
def test_decode_open(frame, info):
    assert eio.decode_open(eio.decode_packet(frame)) == info


@pytest.mark.parametrize(("frame", "message"), OPEN_BAD)
def test_decode_open_refuses(frame, message):
    with pytest.raises(ProtocolError, match=message):
        eio.decode_open(eio.decode_packet(frame))


def test_decode_open_reads_encode_open():
    packet = eio.encode_open("abc", ["websocket"], 25000, 20000, 1000)
    assert eio.decode_open(packet) == eio.OpenInfo("abc", ("websocket",), 25.0, 20.0, 1000)
    with pytest.raises(ProtocolError, match="expected an OPEN packet, got PING"):
        eio.decode_open(eio.Packet(eio.PacketType.PING))


# ---- the handshake: before OPEN

BEFORE_OPEN = [
    (["2"], parse_error("expected the OPEN packet first, got PING")),
    (['42["x"]'], parse_error("expected the OPEN packet first, got MESSAGE")),
    ([b"\x01"], parse_error("expected the OPEN packet first, got MESSAGE")),
    (["0{}"], parse_error("OPEN packet: sid must be a non-empty string")),
    (["0[]"], parse_error("OPEN packet data must be a JSON object")),
    (["x"], parse_error("invalid packet type 'x'")),
    ([""], parse_error("empty packet")),
]


@pytest.mark.parametrize(("frames", "events"), BEFORE_OPEN)
def test_before_open(frames, events):
    p = ClientProtocol()
    assert p.heartbeat_timeout is None
    assert feed(p, frames) == events
    assert p.state is ClientState.CLOSED
    assert p.frames_to_send() == []
    assert p.receive_message(OPEN) == []  # closed for good


def test_open_then_heartbeat_terms():
    p = opened()
    assert p.state is ClientState.OPEN
    assert p.info is not None and p.info.sid == "eio1"
    assert p.heartbeat_timeout == 45.0
    with pytest.raises(Disconnected, match="namespace '/' is not connected"):
        p.emit("/", "x")


def test_use_before_open_raises():
    p = ClientProtocol()
    with pytest.raises(Disconnected, match="handshake is not done"):
        p.connect("/")


# ---- connecting a namespace: (namespace, auth, CONNECT frame, server frames, events)

CONNECTS = [
    ("/", None, "40", ['40{"sid":"abc"}'], [Connected("/", "abc")]),
    ("/orders", {"token": "t"}, '40/orders,{"token":"t"}', ['40/orders,{"sid":"abc"}'],
     [Connected("/orders", "abc")]),
    ("/", {}, "40{}", ['44{"message":"Invalid namespace"}'],
     [ConnectFailed("/", "Invalid namespace")]),
    ("/secure", None, "40/secure,",
     ['44/secure,{"message":"not authorized","data":{"code":401}}'],
     [ConnectFailed("/secure", "not authorized", {"code": 401})]),
    ("/", None, "40", ['44"legacy refusal"'], [ConnectFailed("/", "legacy refusal")]),
    ("/", None, "40", ["44{}"], [ConnectFailed("/", "connection refused")]),
    # pings are answered while connecting; packets of other namespaces are ignored
    ("/", None, "40", ["2", '40/other,{"sid":"x"}', '42["early"]', '40{"sid":"s"}'],
     [Connected("/", "s")]),
    ("/", None, "40", ["40{}"], parse_error(NO_SID)),
    ("/", None, "40", ['40{"sid":5}'], parse_error(NO_SID)),
]


@pytest.mark.parametrize(("namespace", "auth", "frame", "server", "events"), CONNECTS)
def test_connect(namespace, auth, frame, server, events):
    p = opened()
    p.connect(namespace, auth)
    assert p.frames_to_send() == [frame]
    assert p.namespace_state(namespace) is NamespaceState.CONNECTING
    assert feed(p, server) == events
    if isinstance(events[-1], Connected):
        assert p.namespace_state(namespace) is NamespaceState.CONNECTED
        assert p.sid(namespace) == events[-1].sid
    else:
        assert p.namespace_state(namespace) is None
    if "2" in server:
        assert p.frames_to_send() == ["3"]


def test_connect_frames_decode_as_socketio_client_packets():
    """The CONNECT python-socketio's client would send, byte for byte (a second oracle)."""
    p = opened()
    p.connect("/orders", {"token": "t"})
    ours = p.frames_to_send()
    theirs = socketio.packet.Packet(socketio.packet.CONNECT, data={"token": "t"},
                                    namespace="/orders").encode()
    assert ours == ["4" + theirs]


def test_connect_refuses_bad_arguments():
    p = opened()
    with pytest.raises(ValueError, match="auth must be a dict"):
        p.connect("/", ["token"])  # type: ignore[arg-type]
    p.connect("/")
    with pytest.raises(ValueError, match="already connecting"):
        p.connect("/")


# ---- a connected namespace receives: (server frames, events, frames sent back)

RECEIVED = [
    (["2"], [], ["3"]),
    (["2probe"], [], ["3probe"]),
    (["2", "2"], [], ["3", "3"]),
    (["6"], [], []),
    (["3"], [], []),
    (["5"], [], []),
    (['42["chat",1,{"a":null}]'], [EventReceived("/", "chat", [1, {"a": None}])], []),
    (['42["only"]'], [EventReceived("/", "only", [])], []),
    (['427["question","?"]'], [EventReceived("/", "question", ["?"], 7)], []),
    (['451-["up",' + PH0 + "]", b"\x00\xff"], [EventReceived("/", "up", [b"\x00\xff"])], []),
    # an Engine.IO PING between a packet and its attachment is fine, and answered
    (['451-["up",' + PH0 + "]", "2", b"\x01"], [EventReceived("/", "up", [b"\x01"])], ["3"]),
    (['451-["up",' + PH0 + "]", '42["x"]', b"\x01"],
     parse_error("got a text packet while waiting for 1 binary attachment(s)"), []),
    (["41"], [NamespaceDisconnected("/")], []),
    (["1"], [Closed("transport close", "the server closed the connection")], []),
    (['42/other,["x"]'], [], []),  # not our namespace
    (["431[1]"], [], []),  # nobody waits for ack 1
    (["40"], [], []),  # a second CONNECT means nothing
    (["4"], parse_error("empty packet"), []),
    (["42"], parse_error("event payload must be a non-empty list starting with the event name"),
     []),
    (['42["a"'], [], None),  # invalid JSON: a parse error, the detail is json's
    ([b"\x01"], parse_error("unexpected binary attachment: no binary packet is pending"), []),
    ([OPEN], parse_error("a second OPEN packet"), []),
    (["2x"], parse_error("PING packet data must be empty or 'probe'"), []),
    (["9"], parse_error("invalid packet type '9'"), []),
]


@pytest.mark.parametrize(("frames", "events", "sent"), RECEIVED)
def test_receive(frames, events, sent):
    p = connected()
    got = feed(p, frames)
    if sent is None:
        assert len(got) == 1 and got[0].reason == "parse error"
        assert got[0].detail.startswith("invalid JSON payload")
        return
    assert got == events
    assert p.frames_to_send() == sent
    if events and isinstance(events[-1], Closed):
        assert p.state is ClientState.CLOSED
        assert p.close_reason == events[-1]
        with pytest.raises(Disconnected):
            p.emit("/", "after")
        assert p.receive_message("2") == []  # nothing more is read, nothing answered
        assert p.frames_to_send() == []
    if events and isinstance(events[-1], NamespaceDisconnected):
        assert p.namespace_state("/") is None
        with pytest.raises(Disconnected, match="not connected"):
            p.emit("/", "after")


# ---- what the client sends: (calls, frames)

SENT = [
    ([("emit", "/", "chat", [1, "a"], False)], ['42["chat",1,"a"]']),
    ([("emit", "/", "q", [], True), ("emit", "/", "q", [], True)], ['420["q"]', '421["q"]']),
    ([("emit", "/", "up", [b"\x01\x02"], False)], ['451-["up",' + PH0 + "]", b"\x01\x02"]),
    ([("emit", "/", "up", [{"n": [b""]}], True)],
     ['451-0["up",{"n":[' + PH0 + "]}]", b""]),
    ([("ack", "/", 5, ["ok"])], ['435["ok"]']),
    ([("ack", "/", 6, [b"\x07"])], ["461-6[" + PH0 + "]", b"\x07"]),
    ([("ack", "/", 7, [])], ["437[]"]),
    ([("disconnect", "/")], ["41"]),
    ([("disconnect", "/"), ("disconnect", "/")], ["41"]),
    ([("close",)], ["41", "1"]),
]


def call(p: ClientProtocol, step: tuple) -> None:
    name, *args = step
    if name == "emit":
        namespace, event, event_args, ack = args
        p.emit(namespace, event, event_args, ack=ack)
    elif name == "ack":
        p.send_ack(*args)
    elif name == "disconnect":
        p.disconnect(*args)
    else:
        p.close()


@pytest.mark.parametrize(("calls", "frames"), SENT)
def test_send(calls, frames):
    p = connected()
    for step in calls:
        call(p, step)
    assert p.frames_to_send() == frames
    assert p.frames_to_send() == []


def test_send_in_another_namespace():
    p = connected("/orders")
    p.emit("/orders", "x", [1], ack=True)
    p.send_ack("/orders", 3, [])
    p.disconnect("/orders")
    assert p.frames_to_send() == ['42/orders,0["x",1]', "43/orders,3[]", "41/orders,"]


def test_polling_payloads():
    p = ClientProtocol()
    assert p.receive_payload(OPEN + "\x1e2") == [Opened(p.info)]  # type: ignore[arg-type]
    p.connect("/")
    events = p.receive_payload('40{"sid":"s"}\x1e2\x1e451-["up",' + PH0 + ']\x1ebAQI=')
    assert events == [Connected("/", "s"), EventReceived("/", "up", [b"\x01\x02"])]
    p.emit("/", "bin", [b"\xff"])
    assert eio.encode_payload(p.packets_to_send()) == \
        '3\x1e40\x1e3\x1e451-["bin",' + PH0 + "]\x1eb/w=="
    assert p.receive_payload("4x\x1e") == parse_error("empty packet")


# ---- acks

def test_ack_flow():
    p = connected()
    first = p.emit("/", "q", [], ack=True)
    second = p.emit("/", "q", [], ack=True)
    assert (first, second) == (0, 1)
    assert p.receive_message('431["second"]') == [AckReceived("/", 1, ["second"])]
    assert p.receive_message('431["again"]') == []  # answered already
    p.cancel_ack("/", first)  # timed out
    assert p.receive_message('430["late"]') == []
    third = p.emit("/", "up", [], ack=True)
    assert feed(p, ['461-2[' + PH0 + ']', b"\x09"]) == [AckReceived("/", third, [b"\x09"])]


def test_emit_refusals():
    p = connected()
    for reserved in ("connect", "connect_error", "disconnect", "disconnecting", "newListener",
                     "removeListener"):
        with pytest.raises(ValueError, match="reserved event name"):
            p.emit("/", reserved)
    with pytest.raises(ValueError, match="non-empty string"):
        p.emit("/", "")
    with pytest.raises(TypeError, match="cannot encode an argument of type object as JSON"):
        p.emit("/", "x", [object()])
    with pytest.raises(ValueError):
        p.emit("/", "x", [float("nan")])
    with pytest.raises(Disconnected, match="namespace '/other' is not connected"):
        p.emit("/other", "x")
    assert p.frames_to_send() == []  # nothing half-queued


# ---- the end of a connection

def test_heartbeat_expired():
    p = connected()
    assert p.heartbeat_expired() == [Closed("ping timeout",
                                            "no packet from the server within 45 s")]
    assert p.heartbeat_timeout is None
    assert p.heartbeat_expired() == []


def test_transport_closed():
    p = connected()
    assert p.transport_closed("WebSocket closed (1006 ABNORMAL_CLOSURE)") == [
        Closed("transport close", "WebSocket closed (1006 ABNORMAL_CLOSURE)")]
    assert p.transport_closed() == []
    p = connected()
    assert p.transport_closed("connection reset", error=True) == [
        Closed("transport error", "connection reset")]


def test_transport_closed_mid_binary_packet():
    p = connected()
    assert p.receive_message('452-["up",' + PH0 + ',{"_placeholder":true,"num":1}]') == []
    assert p.receive_message(b"one") == []
    assert p.transport_closed() == [
        Closed("transport close", "closed while waiting for 1 binary attachment(s)")]


def test_close_by_client():
    p = connected()
    assert p.close() == [Closed("io client disconnect")]
    assert p.frames_to_send() == ["41", "1"]
    assert p.close() == []
    with pytest.raises(Disconnected, match="io client disconnect"):
        p.emit("/", "x")
    p = opened()  # no namespace yet: only the Engine.IO CLOSE
    p.close()
    assert p.frames_to_send() == ["1"]
    p = ClientProtocol()  # before OPEN: nothing to say
    assert p.close() == [Closed("io client disconnect")]
    assert p.frames_to_send() == []


# ---- properties: the client and the server codec understand each other

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet="abcé", max_size=3), children, max_size=3),
    max_leaves=10)
EVENTS = st.text(min_size=1, max_size=8).filter(lambda e: e not in RESERVED_EVENTS)
NAMESPACES = st.sampled_from(["/", "/orders", "/a-b/c"])


@given(namespace=NAMESPACES, event=EVENTS, args=st.lists(JSON_VALUES, max_size=4),
       ack=st.booleans())
def test_what_the_client_emits_the_server_decodes(namespace, event, args, ack):
    p = connected(namespace)
    ack_id = p.emit(namespace, event, args, ack=ack)
    decoder = sio.Decoder()
    results = [decoder.feed(eio.decode_packet(frame).data) for frame in p.frames_to_send()]
    assert results[-1] == sio.Packet(sio.PacketType.EVENT, namespace, [event, *args], ack_id)


@given(namespace=NAMESPACES, event=EVENTS, args=st.lists(JSON_VALUES, max_size=4),
       ack_id=st.none() | st.integers(0, 2**40))
def test_what_the_server_emits_the_client_decodes(namespace, event, args, ack_id):
    p = connected(namespace)
    events = []
    for part in sio.encode_event(namespace, [event, *args], ack_id):
        events += p.receive_message(eio.encode_packet(eio.Packet(eio.PacketType.MESSAGE, part)))
    assert events == [EventReceived(namespace, event, args, ack_id)]
