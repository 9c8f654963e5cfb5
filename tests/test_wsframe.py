"""WebSocket frame encoding (roomd.protocol.wsframe), checked against wsproto."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd.protocol import eio as _eio
from roomd.protocol import sio as _sio
from roomd.protocol.wsframe import encode_binary_frame, encode_frames, encode_text_frame

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def read_messages(data: bytes) -> list[tuple[Opcode, bytes | str]]:
    """Parse server frames as a client would; return (opcode, payload) per message."""
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(data)
    messages = []
    opcode, chunks = None, []
    for frame in protocol.received_frames():
        if opcode is None:
            opcode = frame.opcode
        chunks.append(frame.payload)
        if frame.message_finished:
            joined = "".join(chunks) if opcode is Opcode.TEXT else b"".join(chunks)
            messages.append((opcode, joined))
            opcode, chunks = None, []
    assert opcode is None, "incomplete message"
    return messages


@pytest.mark.parametrize("size", SIZES)
def test_text_frame(size):
    text = "x" * size
    assert read_messages(encode_text_frame(text)) == [(Opcode.TEXT, text)]
    assert read_messages(encode_text_frame(text.encode())) == [(Opcode.TEXT, text)]


@pytest.mark.parametrize("size", SIZES)
def test_binary_frame(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert read_messages(encode_binary_frame(payload)) == [(Opcode.BINARY, payload)]


@pytest.mark.parametrize(
    ("size", "header"),
    [(0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
     (65535, b"\x81\x7e\xff\xff"), (65536, b"\x81\x7f" + (65536).to_bytes(8, "big"))],
)
def test_header_bytes(size, header):
    frame = encode_text_frame(b"a" * size)
    assert frame[: len(header)] == header
    assert len(frame) == len(header) + size


def test_text_frame_utf8_length_counts_bytes():
    text = "é☃😀" * 50  # 150 chars, 450 bytes
    assert read_messages(encode_text_frame(text)) == [(Opcode.TEXT, text)]


def test_text_frame_rejects_lone_surrogate():
    with pytest.raises(UnicodeEncodeError):
        encode_text_frame("\ud800")


def test_bytes_like_payloads():
    assert encode_binary_frame(bytearray(b"ab")) == b"\x82\x02ab"
    assert encode_binary_frame(memoryview(b"ab")) == b"\x82\x02ab"
    assert encode_frames([memoryview(b"ab")]) == b"\x82\x02ab"


def test_encode_frames_empty():
    assert encode_frames([]) == b""


@pytest.mark.parametrize("size", SIZES)
def test_encode_frames_mixed(size):
    parts = ["4" + "t" * size, b"b" * size, "", b""]
    assert read_messages(encode_frames(parts)) == [
        (Opcode.TEXT, "4" + "t" * size),
        (Opcode.BINARY, b"b" * size),
        (Opcode.TEXT, ""),
        (Opcode.BINARY, b""),
    ]


def test_broadcast_pipeline():
    """sio encode -> eio message -> frames, as the fan-out path builds them."""
    parts = _sio.encode_event("/chat", ["file", {"name": "a.bin", "data": b"\x00" * 70000}])
    wire = [_eio.encode_packet(_eio.Packet(_eio.PacketType.MESSAGE, part)) for part in parts]
    messages = read_messages(encode_frames(wire))
    assert [opcode for opcode, _ in messages] == [Opcode.TEXT, Opcode.BINARY]
    decoder = _sio.Decoder()
    assert decoder.feed(_eio.decode_packet(messages[0][1]).data) is None
    packet = decoder.feed(_eio.decode_packet(messages[1][1]).data)
    data = ["file", {"name": "a.bin", "data": b"\x00" * 70000}]
    assert packet == _sio.Packet(_sio.PacketType.EVENT, "/chat", data)


@given(st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300))))
def test_frames_property(parts):
    expected = [(Opcode.TEXT, p) if isinstance(p, str) else (Opcode.BINARY, p) for p in parts]
    assert read_messages(encode_frames(parts)) == expected
