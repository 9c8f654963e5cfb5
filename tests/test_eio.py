"""Table and property tests for the Engine.IO v4 codec (roomd.protocol.eio)."""

from __future__ import annotations

import json

import engineio.packet
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd._errors import ProtocolError, RoomdError
from roomd.protocol.eio import (
    Packet,
    PacketType,
    decode_packet,
    decode_payload,
    encode_open,
    encode_packet,
    encode_payload,
)

T = PacketType
OPEN_JSON = ('{"sid":"abc","upgrades":["websocket"],'
             '"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}')

# (websocket wire form, packet): checked in both directions.
FRAMES = [
    ("0" + OPEN_JSON, Packet(T.OPEN, OPEN_JSON)),
    ("1", Packet(T.CLOSE)),
    ("2", Packet(T.PING)),
    ("2probe", Packet(T.PING, "probe")),
    ("3", Packet(T.PONG)),
    ("3probe", Packet(T.PONG, "probe")),
    ("4hello", Packet(T.MESSAGE, "hello")),
    ("4", Packet(T.MESSAGE, "")),
    ('42["chat","é☃😀"]', Packet(T.MESSAGE, '2["chat","é☃😀"]')),
    ("5", Packet(T.UPGRADE)),
    ("6", Packet(T.NOOP)),
    (b"\x00\x01\xff", Packet(T.MESSAGE, b"\x00\x01\xff")),
    (b"", Packet(T.MESSAGE, b"")),
]


@pytest.mark.parametrize(("wire", "packet"), FRAMES)
def test_frame_encode(wire, packet):
    assert encode_packet(packet) == wire
    assert type(encode_packet(packet)) is type(wire)


@pytest.mark.parametrize(("wire", "packet"), FRAMES)
def test_frame_decode(wire, packet):
    decoded = decode_packet(wire)
    assert decoded == packet
    assert decoded.type is packet.type


def test_decode_bytes_like():
    assert decode_packet(bytearray(b"ab")) == Packet(T.MESSAGE, b"ab")
    assert decode_packet(memoryview(b"ab")) == Packet(T.MESSAGE, b"ab")
    assert type(decode_packet(bytearray(b"ab")).data) is bytes


BAD_FRAMES = [
    ("", "empty packet"),
    ("7", "invalid packet type '7'"),
    ("x4hello", "invalid packet type 'x'"),
    ("b4hello", "invalid packet type 'b'"),
    ("1x", "CLOSE packet must not carry data"),
    ("5probe", "UPGRADE packet must not carry data"),
    ("6 ", "NOOP packet must not carry data"),
    ("2ping", "PING packet data must be empty or 'probe'"),
    ("3probe2", "PONG packet data must be empty or 'probe'"),
    ("0", "OPEN packet data must be a JSON object"),
    ("0[1]", "OPEN packet data must be a JSON object"),
    ('0{"sid":', "OPEN packet data must be a JSON object"),
    ("0" + "[" * 100000, "OPEN packet data must be a JSON object"),
    (42, "expected a str or bytes frame"),
    (None, "expected a str or bytes frame"),
]


@pytest.mark.parametrize(("wire", "fragment"), BAD_FRAMES)
def test_frame_decode_errors(wire, fragment):
    with pytest.raises(ProtocolError, match=fragment) as info:
        decode_packet(wire)
    assert isinstance(info.value, RoomdError)


def test_encode_binary_on_non_message_is_a_bug():
    with pytest.raises(ValueError):
        encode_packet(Packet(T.PING, b"x"))
    with pytest.raises(ValueError):
        encode_payload([Packet(T.CLOSE, b"x")])


def test_encode_bytes_like_message():
    assert encode_packet(Packet(T.MESSAGE, bytearray(b"ab"))) == b"ab"
    assert encode_payload([Packet(T.MESSAGE, bytearray(b"\x01\x02\x03"))]) == "bAQID"


# (polling wire form, packets): checked in both directions.
PAYLOADS = [
    ("4hello", [Packet(T.MESSAGE, "hello")]),
    ("4hello\x1e4world", [Packet(T.MESSAGE, "hello"), Packet(T.MESSAGE, "world")]),
    ("bAQID", [Packet(T.MESSAGE, b"\x01\x02\x03")]),
    ("b", [Packet(T.MESSAGE, b"")]),
    (
        '42["a"]\x1ebAQID\x1e2\x1e6',
        [Packet(T.MESSAGE, '2["a"]'), Packet(T.MESSAGE, b"\x01\x02\x03"),
         Packet(T.PING), Packet(T.NOOP)],
    ),
    ("1", [Packet(T.CLOSE)]),
    ("4", [Packet(T.MESSAGE)]),
    ("4\x1e4", [Packet(T.MESSAGE), Packet(T.MESSAGE)]),
]


@pytest.mark.parametrize(("wire", "packets"), PAYLOADS)
def test_payload_encode(wire, packets):
    assert encode_payload(packets) == wire


@pytest.mark.parametrize(("wire", "packets"), PAYLOADS)
def test_payload_decode(wire, packets):
    assert decode_payload(wire) == packets


BAD_PAYLOADS = [
    ("", "empty packet"),
    ("4a\x1e", "empty packet"),
    ("\x1e4a", "empty packet"),
    ("4a\x1e\x1e4b", "empty packet"),
    ("b!!!!", "invalid base64"),
    ("bAQI", "invalid base64"),
    ("bAQ ID", "invalid base64"),
    ("bé", "invalid base64"),
    ("4a\x1e9", "invalid packet type '9'"),
    ("4a\x1e2pong", "PING packet data must be empty or 'probe'"),
    (b"4hello", "expected a str payload"),
]


@pytest.mark.parametrize(("wire", "fragment"), BAD_PAYLOADS)
def test_payload_decode_errors(wire, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        decode_payload(wire)


def test_encode_open():
    packet = encode_open("abc", ["websocket"], 25000, 20000, 1000000)
    assert packet.type is T.OPEN
    assert packet.data == OPEN_JSON
    assert encode_packet(packet) == "0" + OPEN_JSON
    assert encode_open("x", (), 1, 2, 3).data == (
        '{"sid":"x","upgrades":[],"pingInterval":1,"pingTimeout":2,"maxPayload":3}'
    )
    assert decode_packet(encode_packet(packet)) == packet


def test_packet_is_frozen():
    with pytest.raises(AttributeError):
        Packet(T.PING).data = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("wire", "packet"), FRAMES)
def test_python_engineio_reads_our_frames(wire, packet):
    theirs = engineio.packet.Packet(encoded_packet=wire)
    assert theirs.packet_type == packet.type
    if isinstance(theirs.data, (bytes, str)):
        assert theirs.data == packet.data
    else:  # engineio json-decodes text data when it can (the OPEN packet)
        assert theirs.data == json.loads(packet.data)


def test_python_engineio_reads_our_base64():
    wire = encode_payload([Packet(T.MESSAGE, b"\x00\xffbinary")])
    assert engineio.packet.Packet(encoded_packet=wire).data == b"\x00\xffbinary"


# ---------------------------------------------------------------- properties

no_rs_text = st.text().filter(lambda s: "\x1e" not in s)
packets = st.one_of(
    st.builds(Packet, st.just(T.MESSAGE), no_rs_text),
    st.builds(Packet, st.just(T.MESSAGE), st.binary()),
    st.builds(Packet, st.sampled_from([T.PING, T.PONG]), st.sampled_from(["", "probe"])),
    st.builds(Packet, st.sampled_from([T.CLOSE, T.UPGRADE, T.NOOP])),
    st.builds(
        lambda d: Packet(T.OPEN, json.dumps(d)),
        st.dictionaries(st.text(), st.one_of(st.integers(), st.text(), st.none())),
    ),
)


@given(packets)
def test_frame_round_trip(packet):
    assert decode_packet(encode_packet(packet)) == packet


@given(st.lists(packets, min_size=1))
def test_payload_round_trip(packet_list):
    assert decode_payload(encode_payload(packet_list)) == packet_list


@given(st.one_of(st.text(), st.binary(), st.text(alphabet="0123456b\x1e{}[]probe\"AQID=")))
def test_decode_packet_fuzz(frame):
    try:
        packet = decode_packet(frame)
    except ProtocolError:
        return
    assert isinstance(packet, Packet)


@given(st.one_of(st.text(), st.text(alphabet="0123456b\x1e{}[]probe\"AQID=/+")))
def test_decode_payload_fuzz(body):
    try:
        result = decode_payload(body)
    except ProtocolError:
        return
    assert result and all(isinstance(p, Packet) for p in result)
