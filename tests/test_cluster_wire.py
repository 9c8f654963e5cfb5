"""roomd/cluster/wire.py against bytes the real Node.js packages published.

The hex strings were captured from Redis (PSUBSCRIBE * and SSUBSCRIBE) while
@socket.io/redis-emitter 5.1.0 and @socket.io/redis-adapter 8.3.0 (classic and sharded,
socket.io 4.8) published them through tests/node/cluster_node.js. Each is decoded by roomd
and, where roomd would send the same message, roomd's encoding is compared byte for byte.
"""

from __future__ import annotations

import base64
import datetime

import msgpack
import pytest

from roomd.cluster import wire
from roomd.cluster.wire import Channels, MessageType, RequestType, Target

# emitter.to("room1").emit("ev", 1, "two", Buffer<00 01 fe ff>)
EMITTER_ROOM = bytes.fromhex(
    "93a7656d697474657283a47479706502a46461746194a2657601a374776fc4040001feffa36e7370a12f83"
    "a5726f6f6d7391a5726f6f6d31a5666c61677380a665786365707490")
# emitter.to(["a", "b"]).except("c").volatile.emit("ev2")
EMITTER_VOLATILE = bytes.fromhex(
    "93a7656d697474657283a47479706502a46461746191a3657632a36e7370a12f83a5726f6f6d7392a161a1"
    "62a5666c61677381a8766f6c6174696c65c3a665786365707491a163")
# emitter.of("/orders").emit("ev3", 1.5, null, true)
EMITTER_ORDERS = bytes.fromhex(
    "93a7656d697474657283a47479706502a46461746194a3657633cb3ff8000000000000c0c3a36e7370a72f"
    "6f726465727383a5726f6f6d7390a5666c61677380a665786365707490")
EMITTER_JOIN = b'{"type":2,"opts":{"rooms":["a"],"except":[]},"rooms":["b"]}'
EMITTER_DISCONNECT = b'{"type":4,"opts":{"rooms":[],"except":["x"]},"close":true}'
EMITTER_SSE = b'{"uid":"emitter","type":6,"data":["sse",{"k":1}]}'
# a classic adapter's io.to("r").emit("ev", Buffer<00 01>), uid KRgKXm
ADAPTER_BROADCAST = bytes.fromhex(
    "93a64b52674b586d83a47479706502a46461746192a26576c4020001a36e7370a12f83a5726f6f6d7391a1"
    "72a665786365707490a5666c61677380")
# io.to("r").timeout(1000).emitWithAck("q", 1): request type 7, msgpack
ADAPTER_BROADCAST_ACK = bytes.fromhex(
    "85a3756964a64b52674b586da9726571756573744964a6725563455368a47479706507a67061636b657483"
    "a47479706502a46461746192a17101a36e7370a12fa46f70747383a5726f6f6d7391a172a6657863657074"
    "90a5666c61677381a774696d656f7574cd03e8")
ADAPTER_SSE = b'{"uid":"KRgKXm","type":6,"data":["sse",1]}'
# the sharded adapter (uid 98d74cf929fa2279): io.to("room1").emit("ev", 1) on room1's channel
SHARDED_ROOM = (b'{"type":3,"data":{"packet":{"type":2,"data":["ev",1]},"opts":{"rooms":["room1"],'
                b'"except":[],"flags":{}}},"uid":"98d74cf929fa2279","nsp":"/"}')
# io.except("x").emit("ev", Buffer<00 01>): binary, so the whole message is msgpack
SHARDED_BINARY = bytes.fromhex(
    "84a47479706503a46461746182a67061636b657482a47479706502a46461746192a26576c4020001a46f70"
    "747383a5726f6f6d7390a665786365707491a178a5666c61677380a3756964b03938643734636639323966"
    "6132323739a36e7370a12f")
SHARDED_SSE = b'{"type":9,"data":{"packet":["sse",1]},"uid":"98d74cf929fa2279","nsp":"/"}'

CH = Channels("socket.io", "/")


@pytest.mark.parametrize("payload, uid, namespace, data, target", [
    (EMITTER_ROOM, "emitter", "/", ["ev", 1, "two", b"\x00\x01\xfe\xff"],
     Target(frozenset({"room1"}), frozenset())),
    (EMITTER_VOLATILE, "emitter", "/", ["ev2"],
     Target(frozenset({"a", "b"}), frozenset({"c"}), True)),
    (EMITTER_ORDERS, "emitter", "/orders", ["ev3", 1.5, None, True],
     Target(frozenset(), frozenset())),
    (ADAPTER_BROADCAST, "KRgKXm", "/", ["ev", b"\x00\x01"], Target(frozenset({"r"}), frozenset())),
])
def test_classic_broadcasts_decode(payload, uid, namespace, data, target):
    message = wire.decode_classic_broadcast(payload)
    assert (message.uid, message.namespace, message.data, message.target) == (
        uid, namespace, data, target)


def test_classic_broadcast_encodes_like_the_node_adapter():
    channel, payload = wire.encode_classic_broadcast(
        "KRgKXm", "/", ["ev", b"\x00\x01"], frozenset({"r"}), frozenset(), False, CH)
    assert (channel, payload) == ("socket.io#/#r#", ADAPTER_BROADCAST)
    channel, _ = wire.encode_classic_broadcast("u", "/", ["e"], frozenset({"a", "b"}),
                                               frozenset(), False, CH)
    assert channel == "socket.io#/#"


@pytest.mark.parametrize("payload, expected", [
    (EMITTER_JOIN, {"type": 2, "opts": {"rooms": ["a"], "except": []}, "rooms": ["b"]}),
    (EMITTER_DISCONNECT, {"type": 4, "opts": {"rooms": [], "except": ["x"]}, "close": True}),
    (EMITTER_SSE, {"uid": "emitter", "type": 6, "data": ["sse", {"k": 1}]}),
    (ADAPTER_SSE, {"uid": "KRgKXm", "type": 6, "data": ["sse", 1]}),
    (ADAPTER_BROADCAST_ACK, {"uid": "KRgKXm", "requestId": "rUcESh", "type": 7,
                             "packet": {"type": 2, "data": ["q", 1], "nsp": "/"},
                             "opts": {"rooms": ["r"], "except": [], "flags": {"timeout": 1000}}}),
])
def test_classic_requests_decode(payload, expected):
    assert wire.decode_request(payload) == expected


def test_classic_requests_encode_like_the_node_adapter():
    assert wire.encode_request({"uid": "KRgKXm", "type": 6, "data": ["sse", 1]}) == ADAPTER_SSE
    assert wire.encode_request(
        {"uid": "KRgKXm", "requestId": "rUcESh", "type": int(RequestType.BROADCAST),
         "packet": wire.encode_packet("/", ["q", 1]),
         "opts": wire.encode_opts(["r"], [], flags={"timeout": 1000})}) == ADAPTER_BROADCAST_ACK
    # bytes in a JSON request travel as JSON.stringify writes a Buffer
    assert wire.encode_request({"type": 6, "data": [b"\x01\x02"]}) == (
        b'{"type":6,"data":[{"type":"Buffer","data":[1,2]}]}')


def test_sharded_messages_decode_and_encode_like_the_node_adapter():
    uid = "98d74cf929fa2279"
    room = wire.decode_cluster_message(SHARDED_ROOM)
    assert room["type"] == MessageType.BROADCAST and room["uid"] == uid
    assert wire.decode_packet(room["data"]["packet"]) == ("/", ["ev", 1])
    assert wire.encode_cluster_message(uid, "/", MessageType.BROADCAST, {
        "packet": wire.encode_packet(None, ["ev", 1]),
        "opts": wire.encode_opts(["room1"], [])}) == SHARDED_ROOM
    binary = wire.decode_cluster_message(SHARDED_BINARY)
    assert binary["data"]["packet"]["data"] == ["ev", b"\x00\x01"]
    assert wire.decode_opts(binary["data"]["opts"]) == Target(frozenset(), frozenset({"x"}))
    assert wire.encode_cluster_message(uid, "/", MessageType.BROADCAST, {
        "packet": wire.encode_packet(None, ["ev", b"\x00\x01"]),
        "opts": wire.encode_opts([], ["x"])}) == SHARDED_BINARY
    assert wire.encode_cluster_message(uid, "/", MessageType.SERVER_SIDE_EMIT,
                                       {"packet": ["sse", 1]}) == SHARDED_SSE


def test_channels():
    ch = Channels("k", "/orders")
    assert (ch.broadcast, ch.request, ch.response, ch.pattern) == (
        "k#/orders#", "k-request#/orders#", "k-response#/orders#", "k#/orders#*")
    assert ch.room("r1") == "k#/orders#r1#"
    assert ch.specific_response("abc123") == "k-response#/orders#abc123#"
    assert ch.sharded_response("f" * 16) == "k#/orders#" + "f" * 16 + "#"
    assert ch.room_of("k#/orders#r1#") == "r1"
    assert ch.room_of("k#/orders#") == ""
    assert ch.room_of("k#/other#r1#") is None
    assert len(wire.classic_uid()) == 6 and len(wire.cluster_uid()) == 16


def test_odd_values():
    # numeric rooms (Node allows them), undefined (notepack fixext 0), Dates (timestamp ext)
    assert wire.room_list([1, 2.5, 3.0, "x"]) == frozenset({"1", "2.5", "3", "x"})
    assert wire.unpack(bytes.fromhex("92d40000a161")) == [None, "a"]
    when = datetime.datetime(2026, 11, 26, 15, 0, 1, 234000, tzinfo=datetime.UTC)
    assert wire.unpack(wire.pack([when])) == ["2026-11-26T15:00:01.234Z"]
    # what the JSON encoder of the sio layer encodes, the cluster encodings send too
    import decimal
    import uuid
    other = [uuid.UUID(int=1), decimal.Decimal("1.5"), datetime.date(2026, 1, 2),
             datetime.datetime(2026, 1, 2, 3, 4, 5)]
    expected = ["00000000-0000-0000-0000-000000000001", "1.5", "2026-01-02",
                "2026-01-02T03:04:05.000"]
    assert wire.unpack(wire.pack(other)) == expected
    assert wire.load(wire.dump_json({"a": other + [when]})) == {
        "a": expected + ["2026-11-26T15:00:01.234Z"]}
    with pytest.raises(TypeError):
        wire.pack([object()])
    # a Server's json_default applies to the cluster's encodings too
    from roomd.protocol import sio

    class Money:
        cents = 250

    def money(obj: object) -> dict:
        if isinstance(obj, Money):
            return {"cents": obj.cents}
        raise TypeError(type(obj).__name__)

    sio.set_json_default(money)
    try:
        assert wire.unpack(wire.pack([Money()])) == [{"cents": 250}]
        assert wire.load(wire.dump_json({"m": Money()})) == {"m": {"cents": 250}}
    finally:
        sio.set_json_default(None)


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"{not json", b"[1,2]", b"\x93\xa1a\x01\x02",
    bytes.fromhex("93a161"),  # [uid] only
])
def test_garbage_is_a_wire_error(payload):
    with pytest.raises(wire.WireError):
        wire.decode_classic_broadcast(payload)
    with pytest.raises(wire.WireError):
        wire.decode_cluster_message(payload)


@pytest.mark.parametrize("message", [
    b'{"type":"6"}', b'{"type":true}', b'[]', b'"x"', b'{"type":5,"requestId":[1]}',
])
def test_bad_requests_are_wire_errors(message):
    with pytest.raises(wire.WireError):
        wire.decode_request(message)


def test_passwords_stay_out_of_logs_and_status():
    from roomd.cluster.link import redacted

    assert redacted("redis://:s3cret@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redacted("rediss://app:s3cret@r.example:6380") == "rediss://app:***@r.example:6380"
    assert redacted("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379"


# -- @socket.io/redis-streams-adapter 0.3 (lib/adapter.ts: encode, decode; SET of sessions) ----
def test_stream_entry_json_and_binary():
    data = {"packet": {"type": 2, "data": ["ev", 1]},
            "opts": {"rooms": ["r"], "except": [], "flags": {}}}
    fields = wire.encode_stream_entry("98d74cf929fa2279", "/", MessageType.BROADCAST, data)
    assert fields == {"uid": "98d74cf929fa2279", "nsp": "/", "type": "3",
                      "data": '{"packet":{"type":2,"data":["ev",1]},'
                              '"opts":{"rooms":["r"],"except":[],"flags":{}}}'}
    assert wire.decode_stream_entry({k.encode(): v.encode() for k, v in fields.items()}) == {
        "uid": "98d74cf929fa2279", "nsp": "/", "type": 3, "data": data}
    binary = {"packet": {"type": 2, "data": ["ev", b"\x00\x01"]}, "opts": data["opts"]}
    fields = wire.encode_stream_entry("u", "/", MessageType.BROADCAST, binary)
    assert not fields["data"].startswith("{")  # base64 msgpack, as Buffer.toString("base64")
    assert wire.decode_stream_entry(fields)["data"] == binary
    # a join carries no binary: JSON even with bytes-looking content is not possible
    join = wire.encode_stream_entry("u", "/", MessageType.SOCKETS_JOIN,
                                    {"opts": {"rooms": [], "except": []}, "rooms": ["a"]})
    assert join["type"] == "4" and join["data"].startswith("{")
    # a heartbeat-like message without data has no data field
    assert wire.encode_stream_entry("u", "/", MessageType.HEARTBEAT, None) == {
        "uid": "u", "nsp": "/", "type": "2"}


@pytest.mark.parametrize("fields", [
    {}, {"uid": "u", "nsp": "/"}, {"uid": "u", "nsp": "/", "type": "x"},
    {"uid": "u", "nsp": "/", "type": "3", "data": "{nope"},
    {"uid": "u", "nsp": "/", "type": "3", "data": "!!notbase64"},
    {"uid": "u", "nsp": "/", "type": "3", "data": "kQE="},  # msgpack [1]: not an object
    {b"uid": b"\xff", b"nsp": b"/", b"type": b"3"},
])
def test_stream_entry_garbage_raises_wire_error(fields):
    with pytest.raises(wire.WireError):
        wire.decode_stream_entry(fields)


def test_pubsub_requests_are_msgpack():
    payload = wire.encode_pubsub_message("u", "/", MessageType.FETCH_SOCKETS,
                                         {"opts": {"rooms": []}, "requestId": "1"})
    assert payload[:1] != b"{"
    assert wire.decode_cluster_message(payload) == {
        "type": 7, "data": {"opts": {"rooms": []}, "requestId": "1"}, "uid": "u", "nsp": "/"}


def test_stream_ids():
    assert wire.parse_stream_id("1700000000000-3") == (1700000000000, 3)
    for bad in (None, 3, "", "1", "1-", "-1", "a-1", "1-2-3", "1-" + "9" * 40, "١-1"):
        assert wire.parse_stream_id(bad) is None
    assert wire.next_stream_id((5, 1)) == "5-2"
    assert wire.next_stream_id((5, 2**64 - 1)) == "6-0"


def test_session_as_node_stores_it():
    raw = wire.encode_session("sid1", "pid1", ["sid1", "r"], {"node": True})
    assert msgpack.unpackb(base64.b64decode(raw)) == {
        "sid": "sid1", "pid": "pid1", "rooms": ["sid1", "r"], "data": {"node": True}}
    assert wire.decode_session(raw.encode()) == ("sid1", "pid1", frozenset({"sid1", "r"}),
                                                 {"node": True})
    for bad in (b"!!", base64.b64encode(msgpack.packb([1])), base64.b64encode(
            msgpack.packb({"sid": 1, "pid": "p"}))):
        with pytest.raises(wire.WireError):
            wire.decode_session(bad)
