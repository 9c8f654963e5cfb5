"""Table and property tests for the Socket.IO v5 codec (roomd.protocol.sio)."""

from __future__ import annotations

import math

import pytest
import socketio.packet
from hypothesis import given
from hypothesis import strategies as st

from roomd._errors import ProtocolError
from roomd.protocol.sio import Decoder, Packet, PacketType, encode, encode_event

T = PacketType
PH0 = '{"_placeholder":true,"num":0}'
PH1 = '{"_placeholder":true,"num":1}'

# (wire messages, packet): checked in both directions.
ROUND_TRIP = [
    (["0"], Packet(T.CONNECT)),
    (["0/admin,"], Packet(T.CONNECT, "/admin")),
    (['0{"token":"abc"}'], Packet(T.CONNECT, data={"token": "abc"})),
    (['0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}'],
     Packet(T.CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"})),
    (["1"], Packet(T.DISCONNECT)),
    (["1/admin,"], Packet(T.DISCONNECT, "/admin")),
    (['2["hello",1]'], Packet(T.EVENT, data=["hello", 1])),
    (['2["hello"]'], Packet(T.EVENT, data=["hello"])),
    (['2/chat,12["hello",{"a":[1,2.5,null,true]}]'],
     Packet(T.EVENT, "/chat", ["hello", {"a": [1, 2.5, None, True]}], 12)),
    (['20["x"]'], Packet(T.EVENT, data=["x"], id=0)),
    (['2["é☃😀","\\"quoted\\""]'], Packet(T.EVENT, data=["é☃😀", '"quoted"'])),
    (["312[]"], Packet(T.ACK, data=[], id=12)),
    (['3/chat,7["ok",2]'], Packet(T.ACK, "/chat", ["ok", 2], 7)),
    (['4{"message":"Invalid namespace"}'],
     Packet(T.CONNECT_ERROR, data={"message": "Invalid namespace"})),
    (
        ['4/admin,{"message":"not authorized","data":{"code":401}}'],
        Packet(T.CONNECT_ERROR, "/admin", {"message": "not authorized", "data": {"code": 401}}),
    ),
    (['4"legacy"'], Packet(T.CONNECT_ERROR, data="legacy")),
    (['51-["up",' + PH0 + "]", b"\x01\x02"], Packet(T.EVENT, data=["up", b"\x01\x02"])),
    (
        ['52-/files,9["up",{"a":' + PH0 + ',"b":[' + PH1 + "]}]", b"A", b""],
        Packet(T.EVENT, "/files", ["up", {"a": b"A", "b": [b""]}], 9),
    ),
    (["61-/chat,3[" + PH0 + "]", b"\xff"], Packet(T.ACK, "/chat", [b"\xff"], 3)),
]


@pytest.mark.parametrize(("wire", "packet"), ROUND_TRIP)
def test_encode(wire, packet):
    assert encode(packet) == wire


@pytest.mark.parametrize(("wire", "packet"), ROUND_TRIP)
def test_decode(wire, packet):
    decoder = Decoder()
    results = [decoder.feed(message) for message in wire]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == packet
    assert results[-1].type is packet.type
    assert decoder.awaiting_attachments == 0


@pytest.mark.parametrize(("wire", "packet"), ROUND_TRIP)
def test_python_socketio_agrees(wire, packet):
    """The stock Python client parses our wire form to the same packet."""
    theirs = socketio.packet.Packet(encoded_packet=wire[0])
    for attachment in wire[1:]:
        theirs.add_attachment(attachment)
    plain = {T.BINARY_EVENT: T.EVENT, T.BINARY_ACK: T.ACK}
    base = plain.get(theirs.packet_type, theirs.packet_type)
    assert base == packet.type
    assert (theirs.namespace or "/") == packet.namespace
    assert theirs.id == packet.id
    assert theirs.data == packet.data


# Wire forms we accept but never produce.
DECODE_ONLY = [
    (["0/admin"], Packet(T.CONNECT, "/admin")),
    (["1/admin"], Packet(T.DISCONNECT, "/admin")),
    (['50-["x"]'], Packet(T.EVENT, data=["x"])),
    (['60-5[1]'], Packet(T.ACK, data=[1], id=5)),
    (['2 ["x"] '], Packet(T.EVENT, data=["x"])),
    (['2["x","\\u00e9"]'], Packet(T.EVENT, data=["x", "é"])),
    (['2["x",{"_placeholder":true,"num":0}]'],
     Packet(T.EVENT, data=["x", {"_placeholder": True, "num": 0}])),
    (['52-["x",' + PH1 + "," + PH0 + "," + PH1 + "]", b"a", b"b"],
     Packet(T.EVENT, data=["x", b"b", b"a", b"b"])),
    (['51-["x",{"_placeholder":false,"num":7},' + PH0 + "]", bytearray(b"a")],
     Packet(T.EVENT, data=["x", {"_placeholder": False, "num": 7}, b"a"])),
]


@pytest.mark.parametrize(("wire", "packet"), DECODE_ONLY)
def test_decode_only(wire, packet):
    decoder = Decoder()
    results = [decoder.feed(message) for message in wire]
    assert results[-1] == packet


BIG_NEST = '2["x",' + "[" * 100000 + "]" * 100000 + "]"

# (wire messages, expected message fragment): the last message raises.
MALFORMED = [
    ([""], "empty packet"),
    (["9"], "invalid packet type '9'"),
    (["x"], "invalid packet type 'x'"),
    (['٢["x"]'], "invalid packet type"),
    (['2chat,["x"]'], "namespace must start with '/'"),
    (["0admin,"], "namespace must start with '/'"),
    (["2"], "event payload must be a non-empty list starting with the event name"),
    (["2/chat,"], "event payload must be a non-empty list"),
    (["2[]"], "event payload must be a non-empty list"),
    (['2{"a":1}'], "event payload must be a non-empty list"),
    (["2[1]"], "event payload must be a non-empty list"),
    (['2"x"'], "event payload must be a non-empty list"),
    (['2["x"'], "invalid JSON payload"),
    (['2["x"]]'], "invalid JSON payload"),
    (['2["x",NaN]'], "invalid JSON payload"),
    (['2["x",-Infinity]'], "invalid JSON payload"),
    (['2["x",1e999]'], "invalid JSON payload"),
    (['2["x",' + "9" * 5000 + "]"], "invalid JSON payload"),
    (['2["x\x01"]'], "invalid JSON payload"),
    ([BIG_NEST], "invalid JSON payload"),
    (['2' + "1" * 17 + '["x"]'], "ack id too long"),
    (["3"], "ack payload must be a list"),
    (["31{}"], "ack payload must be a list"),
    (["3/chat,1null"], "ack payload must be a list"),
    (["0[]"], "connect payload must be an object"),
    (["0null"], "connect payload must be an object"),
    (['0"x"'], "connect payload must be an object"),
    (["1{}"], "disconnect packet must not carry a payload"),
    (["1/admin,null"], "disconnect packet must not carry a payload"),
    (["4"], "connect error payload must be an object or a string"),
    (["4[1]"], "connect error payload must be an object or a string"),
    (['5["x"]'], "invalid attachment count"),
    (['5a-["x"]'], "invalid attachment count"),
    (['5-["x"]'], "invalid attachment count"),
    (['5' + "1" * 11 + '-["x"]'], "invalid attachment count"),
    (['51001-["x"]'], "too many attachments"),
    (['51-[]'], "event payload must be a non-empty list"),
    (['61-{}'], "ack payload must be a list"),
    ([b"\x00"], "unexpected binary attachment"),
    (['51-["x",' + PH0 + "]", '2["y"]'], "got a text packet while waiting for 1 binary attachment"),
    (['51-["x",' + PH1 + "]", b"a"], r"placeholder num must be an integer in range\(0, 1\)"),
    (['51-["x",{"_placeholder":true,"num":-1}]', b"a"], "placeholder num must be an integer"),
    (['51-["x",{"_placeholder":true,"num":true}]', b"a"], "placeholder num must be an integer"),
    (['51-["x",{"_placeholder":true,"num":"0"}]', b"a"], "placeholder num must be an integer"),
    (['51-["x",{"_placeholder":true,"num":0.0}]', b"a"], "placeholder num must be an integer"),
    (['51-["x",{"_placeholder":true}]', b"a"], "placeholder num must be an integer"),
    (['50-["x",' + PH0 + "]"], r"placeholder num must be an integer in range\(0, 0\)"),
    (['52-["x",' + PH0 + "]", b"a", b"b"], "attachment 1 is not referenced"),
    (['51-["x"]', b"a"], "attachment 0 is not referenced"),
    (['2["x"]', b"a"], "unexpected binary attachment"),
    ([42], "expected a str or bytes message"),
    ([None], "expected a str or bytes message"),
]


@pytest.mark.parametrize(("wire", "fragment"), MALFORMED)
def test_malformed(wire, fragment):
    decoder = Decoder()
    for message in wire[:-1]:
        decoder.feed(message)
    with pytest.raises(ProtocolError, match=fragment):
        decoder.feed(wire[-1])


def test_max_attachments_configurable():
    decoder = Decoder(max_attachments=2)
    assert decoder.feed('52-["x",' + PH0 + "," + PH1 + "]") is None
    with pytest.raises(ProtocolError, match=r"too many attachments \(3 > 2\)"):
        Decoder(max_attachments=2).feed('53-["x"]')


def test_awaiting_attachments_and_reset_after_error():
    decoder = Decoder()
    assert decoder.awaiting_attachments == 0
    assert decoder.feed('52-["x",' + PH0 + "," + PH1 + "]") is None
    assert decoder.awaiting_attachments == 2
    assert decoder.feed(b"a") is None
    assert decoder.awaiting_attachments == 1
    with pytest.raises(ProtocolError):
        decoder.feed('2["y"]')
    assert decoder.awaiting_attachments == 0
    assert decoder.feed('2["y"]') == Packet(T.EVENT, data=["y"])


def test_decoder_interleaves_plain_and_binary_packets():
    decoder = Decoder()
    assert decoder.feed('2["a"]') == Packet(T.EVENT, data=["a"])
    assert decoder.feed('51-["b",' + PH0 + "]") is None
    assert decoder.feed(b"1") == Packet(T.EVENT, data=["b", b"1"])
    assert decoder.feed('2["c"]') == Packet(T.EVENT, data=["c"])


# ------------------------------------------------------------------ encoding


def test_encode_event_matches_encode():
    for ns, args, ack in [("/", ["a", 1], None), ("/x", ["a", b"z", {"k": bytearray(b"y")}], 4)]:
        assert encode_event(ns, args, ack) == encode(Packet(T.EVENT, ns, args, ack))


def test_binary_types_without_bytes_go_out_plain():
    assert encode(Packet(T.BINARY_EVENT, data=["a"])) == ['2["a"]']
    assert encode(Packet(T.BINARY_ACK, data=[], id=1)) == ["31[]"]


def test_bytes_like_attachments_become_bytes():
    out = encode_event("/", ["a", bytearray(b"x"), memoryview(b"y"), (b"z",)])
    assert out == ['53-["a",' + PH0 + "," + PH1 + ',[{"_placeholder":true,"num":2}]]',
                   b"x", b"y", b"z"]
    assert all(type(item) is bytes for item in out[1:])


def test_tuple_args():
    assert encode_event("/", ("a", (1, 2))) == ['2["a",[1,2]]']


def test_lone_surrogate_is_escaped():
    out = encode_event("/", ["a", "é\ud800"])
    assert out == ['2["a","\\u00e9\\ud800"]']
    out[0].encode("utf-8")
    decoded = Decoder().feed('2["a","\\ud800"]')
    assert encode(decoded) == ['2["a","\\ud800"]']


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: encode_event("/", []), ValueError),
        (lambda: encode_event("/", [1]), ValueError),
        (lambda: encode_event("chat", ["a"]), ValueError),
        (lambda: encode_event("/a,b", ["a"]), ValueError),
        (lambda: encode_event("/", ["a"], -1), ValueError),
        (lambda: encode_event("/", ["a"], True), ValueError),
        (lambda: encode_event("/", ["a", math.nan]), ValueError),
        (lambda: encode_event("/", ["a", math.inf, b"x"]), ValueError),
        (lambda: encode_event("/", ["a", object()]), TypeError),
        (lambda: encode_event("/", ["a", b"x", object()]), TypeError),
        (lambda: encode(Packet(T.EVENT, data={"a": 1})), ValueError),
        (lambda: encode(Packet(T.ACK, data={"a": 1})), ValueError),
        (lambda: encode(Packet(T.CONNECT, data=[1])), ValueError),
        (lambda: encode(Packet(T.CONNECT, data={"a": b"x"})), ValueError),
        (lambda: encode(Packet(T.CONNECT_ERROR)), ValueError),
        (lambda: encode(Packet(T.DISCONNECT, data={})), ValueError),
        (lambda: encode(Packet(9)), ValueError),  # type: ignore[arg-type]
    ],
)
def test_encode_errors(call, error):
    with pytest.raises(error):
        call()


def test_circular_data_is_a_value_error():
    data: list = ["a"]
    data.append(data)
    with pytest.raises(ValueError):
        encode_event("/", data)
    data.append(b"x")
    with pytest.raises(ValueError):
        encode_event("/", data)


# ---------------------------------------------------------------- properties

keys = st.text().filter(lambda k: k != "_placeholder")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)


def json_like(leaves):
    return st.recursive(
        leaves,
        lambda children: (st.lists(children, max_size=4)
                          | st.dictionaries(keys, children, max_size=4)),
        max_leaves=12,
    )


with_bytes = json_like(scalars | st.binary(max_size=16))
no_bytes = json_like(scalars)
namespaces = st.just("/") | st.text().filter(lambda s: "," not in s).map(lambda s: "/" + s)
ack_ids = st.none() | st.integers(min_value=0, max_value=2**53 - 1)

packets = st.one_of(
    st.builds(Packet, st.just(T.EVENT), namespaces,
              st.tuples(st.text(), st.lists(with_bytes, max_size=4)).map(lambda t: [t[0], *t[1]]),
              ack_ids),
    st.builds(Packet, st.just(T.ACK), namespaces, st.lists(with_bytes, max_size=4), ack_ids),
    st.builds(Packet, st.just(T.CONNECT), namespaces,
              st.none() | st.dictionaries(keys, no_bytes, max_size=4)),
    st.builds(Packet, st.just(T.CONNECT_ERROR), namespaces,
              st.text() | st.dictionaries(keys, no_bytes, max_size=4)),
    st.builds(Packet, st.just(T.DISCONNECT), namespaces),
)


@given(packets)
def test_round_trip(packet):
    wire = encode(packet)
    assert isinstance(wire[0], str)
    wire[0].encode("utf-8")
    assert all(type(item) is bytes for item in wire[1:])
    decoder = Decoder()
    results = [decoder.feed(message) for message in wire]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == packet


@given(packets)
def test_python_socketio_round_trip(packet):
    """python-socketio's parser reads what we write."""
    wire = encode(packet)
    theirs = socketio.packet.Packet(encoded_packet=wire[0])
    for attachment in wire[1:]:
        theirs.add_attachment(attachment)
    assert theirs.data == packet.data
    assert theirs.id == packet.id


fuzz_alphabet = '0123456789-/,[]{}":_placeholdertruenum \\'
messages = st.one_of(
    st.text(),
    st.binary(),
    st.text(alphabet=fuzz_alphabet),
    st.tuples(st.sampled_from("0123456"), st.text(alphabet=fuzz_alphabet)).map("".join),
)


@given(st.lists(messages, min_size=1, max_size=5))
def test_decoder_fuzz(sequence):
    decoder = Decoder(max_attachments=3)
    for message in sequence:
        try:
            packet = decoder.feed(message)
        except ProtocolError:
            continue
        assert packet is None or isinstance(packet, Packet)


def test_ids_never_look_like_options():
    from roomd.protocol.sio import new_id

    ids = [new_id() for _ in range(5000)]
    assert all(len(i) == 20 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
