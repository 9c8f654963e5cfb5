"""The server-side WebSocket protocol (roomd.protocol.websocket), checked against wsproto.

Client frames are built by wsproto's client-side FrameProtocol (masked, as a
browser sends them) or, for frames wsproto refuses to build, by ``raw``.
Everything roomd sends back is parsed by a client-side wsproto FrameProtocol,
which also checks that it is unmasked and well-formed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd.protocol.websocket import WebSocketProtocol, accept_token, close_frame, handshake_error

MAX = 1 << 20
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# --- helpers -------------------------------------------------------------

def client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


def frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame with any opcode and payload (even mid-character text)."""
    return bytes(client()._serialize_frame(opcode, payload, fin))


def raw(first: int, payload: bytes = b"", *, masked: bool = True, length: int | None = None,
        key: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A client frame built by hand.

    ``first`` is FIN/RSV/opcode; ``length`` overrides the header.
    """
    n = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 0x10000:
        header = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return header + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + body


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def server_frames(data: bytes) -> list:
    """Parse what roomd sent, as a client would."""
    parser = client()
    parser.receive_bytes(data)
    frames = list(parser.received_frames())
    return frames


def assert_closed_with(output: bytes, code: int) -> None:
    frames = server_frames(output)
    assert len(frames) == 1
    assert frames[0].opcode is Opcode.CLOSE
    assert frames[0].payload[0] == code


def feed(protocol: WebSocketProtocol, data: bytes, chunk: int | None = None) -> list:
    if chunk is None:
        return protocol.receive(data)
    messages = []
    for i in range(0, len(data), chunk):
        messages += protocol.receive(data[i:i + chunk])
    return messages


# --- handshake -------------------------------------------------------------

GOOD = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
        "sec-websocket-key": KEY}


@pytest.mark.parametrize(("changes", "error"), [
    ({}, None),
    ({"connection": "keep-alive, Upgrade"}, None),
    ({"connection": "upgrade", "upgrade": "WebSocket"}, None),
    ({"connection": None}, "Connection"),
    ({"connection": "keep-alive"}, "Connection"),
    ({"upgrade": None}, "Upgrade"),
    ({"upgrade": "h2c"}, "Upgrade"),
    ({"sec-websocket-version": None}, "Version"),
    ({"sec-websocket-version": "8"}, "Version"),
    ({"sec-websocket-key": None}, "16 bytes"),
    ({"sec-websocket-key": ""}, "16 bytes"),
    ({"sec-websocket-key": "c2hvcnQ="}, "16 bytes"),                      # 5 bytes
    ({"sec-websocket-key": "AAAAAAAAAAAAAAAAAAAAAAAA"}, "16 bytes"),      # 18 bytes
    ({"sec-websocket-key": "not base64 at all!!!===="}, "not base64"),
    ({"sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ="}, "not base64"),     # bad padding
    ({"sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==é"}, "not base64"),
])
def test_handshake_error(changes, error):
    headers = dict(GOOD)
    for name, value in changes.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    result = handshake_error(headers)
    if error is None:
        assert result is None
    else:
        assert result is not None and error in result


def test_accept_token_rfc_example():
    # RFC 6455, section 1.3.
    assert accept_token(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("key", [KEY, "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w=="])
def test_accept_token_matches_wsproto(key):
    from wsproto.utilities import generate_accept_token

    assert accept_token(key) == generate_accept_token(key.encode()).decode()


# --- valid traffic -------------------------------------------------------

@pytest.mark.parametrize("message", [
    "",
    "hello",
    "é☃😀 mixed ascii",
    "😀" * 40000,                              # 160000 bytes: 64-bit length
    b"",
    b"\x00" * 125,
    bytes(range(256)) * 100 + b"x" * 26,       # 25626 bytes
    b"\xff" * 126,
    b"\x01" * 65535,
    b"\x02" * 65536,
    bytes(range(256)) * 781 + b"tail",         # 199940 bytes
    b"\x07" * 200_000,
], ids=lambda m: f"{type(m).__name__}-{len(m)}")
@pytest.mark.parametrize("chunk", [None, 1000, 7])
def test_single_message(message, chunk):
    protocol = WebSocketProtocol(MAX)
    messages = feed(protocol, bytes(client().send_data(message)), chunk)
    assert messages == [message]
    assert type(messages[0]) is type(message)
    assert protocol.take_output() == b""
    assert protocol.close_code is None
    assert protocol._buffer == b""


def test_several_messages_in_one_read():
    sender = client()
    data = b"".join(bytes(sender.send_data(m)) for m in ["a", b"b", "", b"", "é" * 100])
    protocol = WebSocketProtocol(MAX)
    assert protocol.receive(data) == ["a", b"b", "", b"", "é" * 100]


def test_text_fragmented_mid_character_with_pings():
    text = "aé☃😀z"
    encoded = text.encode()
    # Split inside é (2 bytes), inside ☃ (3 bytes) and inside 😀 (4 bytes).
    pieces = [encoded[:2], encoded[2:5], encoded[5:8], encoded[8:]]
    data = (frame(Opcode.TEXT, pieces[0], fin=False)
            + bytes(client().ping(b"one"))
            + frame(Opcode.CONTINUATION, pieces[1], fin=False)
            + frame(Opcode.CONTINUATION, pieces[2], fin=False)
            + bytes(client().ping(b""))
            + bytes(client().ping(b"p" * 125))
            + frame(Opcode.CONTINUATION, pieces[3], fin=True))
    for chunk in (None, 1, 3):
        protocol = WebSocketProtocol(MAX)
        assert feed(protocol, data, chunk) == [text]
        pongs = server_frames(protocol.take_output())
        # Pings not yet answered when the next arrives are answered by the newest only.
        assert [(f.opcode, bytes(f.payload)) for f in pongs] == [(Opcode.PONG, b"p" * 125)]
        assert protocol.take_output() == b""
        assert protocol.close_code is None


def test_binary_in_many_fragments_with_pings():
    payload = bytes(range(256)) * 300
    sender = client()
    data = b""
    chunks = [payload[i:i + 997] for i in range(0, len(payload), 997)]
    for i, piece in enumerate(chunks):
        data += bytes(sender.send_data(piece, fin=i == len(chunks) - 1))
        if i % 10 == 0:
            data += bytes(sender.ping(str(i).encode()))
    data += bytes(sender.send_data(b"after"))
    protocol = WebSocketProtocol(MAX)
    assert protocol.receive(data) == [payload, b"after"]
    pongs = server_frames(protocol.take_output())
    last = str(list(range(0, len(chunks), 10))[-1]).encode()
    assert [bytes(f.payload) for f in pongs] == [last]  # the newest ping only
    assert all(f.opcode is Opcode.PONG for f in pongs)


def test_fragmented_with_empty_fragments():
    sender = client()
    data = (bytes(sender.send_data("", fin=False)) + bytes(sender.send_data("ab", fin=False))
            + bytes(sender.send_data("", fin=True)))
    data += bytes(sender.send_data(b"", fin=False)) + bytes(sender.send_data(b"", fin=True))
    assert WebSocketProtocol(MAX).receive(data) == ["ab", b""]


def test_pong_from_client_is_ignored():
    data = bytes(client().pong(b"unsolicited")) + bytes(client().send_data("x"))
    protocol = WebSocketProtocol(MAX)
    assert protocol.receive(data) == ["x"]
    assert protocol.take_output() == b""


@st.composite
def encoded_messages(draw):
    """(messages, wire bytes, ping payloads): random fragmentation and interleaved pings."""
    messages = draw(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=8))
    wire = b""
    pings = []
    for message in messages:
        opcode = Opcode.TEXT if isinstance(message, str) else Opcode.BINARY
        encoded = message.encode() if isinstance(message, str) else message
        cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=4)))
        bounds = [0, *cuts, len(encoded)]
        pieces = [encoded[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        for i, piece in enumerate(pieces):
            if i and draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                pings.append(ping)
                wire += bytes(client().ping(ping))
            kind = opcode if i == 0 else Opcode.CONTINUATION
            wire += frame(kind, piece, fin=i == len(pieces) - 1)
    return messages, wire, pings


@settings(max_examples=300, deadline=None)
@given(encoded_messages(), st.data())
def test_random_messages_random_chunks(encoded, data):
    messages, wire, pings = encoded
    protocol = WebSocketProtocol(MAX)
    received = []
    pongs = []
    pos = 0
    while pos < len(wire):
        size = data.draw(st.integers(1, len(wire) - pos))
        received += protocol.receive(wire[pos:pos + size])
        pos += size
        pongs += server_frames(protocol.take_output())  # the newest ping of each read
    assert received == messages
    assert protocol.close_code is None
    assert protocol._buffer == b""
    answered = [bytes(f.payload) for f in pongs]
    assert all(f.opcode is Opcode.PONG for f in pongs)
    # Every pong answers a ping, in order, and the last ping is always answered.
    it = iter(pings)
    assert all(any(p == q for q in it) for p in answered)
    assert (answered[-1:] == pings[-1:])


def test_byte_at_a_time():
    message = "é" * 70000  # 140000 bytes, 64-bit length
    data = bytes(client().send_data(message)) + bytes(client().send_data(b"next"))
    first = len(data) - len(bytes(client().send_data(b"next")))
    protocol = WebSocketProtocol(MAX)
    for i in range(first - 1):
        assert protocol.receive(data[i:i + 1]) == []
        assert len(protocol._buffer) == i + 1
    assert protocol.receive(data[first - 1:first]) == [message]
    assert protocol._buffer == b""
    for i in range(first, len(data) - 1):
        assert protocol.receive(data[i:i + 1]) == []
        assert len(protocol._buffer) == i + 1 - first
    assert protocol.receive(data[-1:]) == [b"next"]
    assert protocol._buffer == b""


def test_buffer_keeps_only_the_unfinished_frame():
    sender = client()
    whole = bytes(sender.send_data(b"a" * 1000))
    second = bytes(sender.send_data(b"b" * 1000))
    protocol = WebSocketProtocol(MAX)
    assert protocol.receive(whole + second[:10]) == [b"a" * 1000]
    assert bytes(protocol._buffer) == second[:10]
    assert protocol.receive(second[10:]) == [b"b" * 1000]
    assert protocol._buffer == b""


def test_partial_frame_grows_in_place():
    """A large frame arriving in small reads is appended to, not copied on every read."""
    data = bytes(client().send_data(b"z" * 100_000))
    protocol = WebSocketProtocol(MAX)
    last = len(data) - 50
    assert protocol.receive(data[:100]) == []
    buffer = protocol._buffer
    for i in range(100, last, 100):
        assert protocol.receive(data[i:min(i + 100, last)]) == []
        assert protocol._buffer is buffer
    assert protocol.receive(data[last:]) == [b"z" * 100_000]
    assert protocol._buffer == b""


# --- closing ---------------------------------------------------------------

@pytest.mark.parametrize(("code", "reason"),
                         [(1000, "bye"), (1001, ""), (4000, "é" * 20), (3000, "x")])
def test_client_close(code, reason):
    protocol = WebSocketProtocol(MAX)
    data = bytes(client().send_data("last")) + bytes(client().close(code, reason))
    assert protocol.receive(data + bytes(client().send_data("ignored"))) == ["last"]
    assert protocol.close_code == code
    assert protocol.close_reason == reason
    assert_closed_with(protocol.take_output(), 1000)
    # Closed: later data is ignored, and no second close frame is ever sent.
    assert protocol.receive(bytes(client().send_data("later"))) == []
    assert protocol.receive(None) == []
    assert protocol.close_code == code
    assert protocol.take_output() == b""
    assert protocol.close_frame(1000) == b""


def test_client_close_empty_payload():
    protocol = WebSocketProtocol(MAX)
    assert protocol.receive(raw(0x88)) == []
    assert protocol.close_code == 1005
    assert protocol.close_reason == ""
    assert_closed_with(protocol.take_output(), 1000)


def test_connection_lost():
    protocol = WebSocketProtocol(MAX)
    sender = client()
    assert protocol.receive(bytes(sender.send_data("partial", fin=False))) == []
    assert protocol.receive(None) == []
    assert protocol.close_code == 1006
    assert protocol.take_output() == b""
    assert protocol.receive(bytes(sender.send_data("rest"))) == []


def test_server_initiated_close():
    protocol = WebSocketProtocol(MAX)
    assert_closed_with(protocol.close_frame(1001), 1001)
    assert protocol.close_frame(1000) == b""
    # The client's answer ends the handshake; nothing more is owed to it.
    assert protocol.receive(bytes(client().close(1001, ""))) == []
    assert protocol.close_code == 1001
    assert protocol.take_output() == b""


@pytest.mark.parametrize(("code", "reason"),
                         [(1000, ""), (1002, "protocol"), (4999, "é" * 80), (1000, "x" * 200)])
def test_close_frame_function(code, reason):
    frames = server_frames(close_frame(code, reason))
    assert len(frames) == 1 and frames[0].opcode is Opcode.CLOSE
    got_code, got_reason = frames[0].payload
    assert got_code == code
    assert reason.startswith(got_reason) and len(got_reason.encode()) <= 123


# --- malformed ---------------------------------------------------------------

SMALL = 1000

MALFORMED = [
    ("rsv1", raw(0xC1, b"hi"), 1002),
    ("rsv2", raw(0xA2, b"hi"), 1002),
    ("rsv3 on ping", raw(0x99, b""), 1002),
    ("unmasked", raw(0x81, b"hi", masked=False), 1002),
    ("unmasked ping", raw(0x89, b"", masked=False), 1002),
    ("ping over 125", raw(0x89, b"p" * 126), 1002),
    ("close over 125", raw(0x88, close_payload(1000, b"r" * 124)), 1002),
    ("fragmented ping", raw(0x09, b"p"), 1002),
    ("fragmented close", raw(0x08, close_payload(1000)), 1002),
    ("continuation first", raw(0x80, b"x"), 1002),
    ("unfinished continuation first", raw(0x00, b"x"), 1002),
    ("text inside fragmented", raw(0x01, b"a") + raw(0x81, b"b"), 1002),
    ("binary inside fragmented", raw(0x02, b"a") + raw(0x82, b"b"), 1002),
    ("text inside fragmented binary", raw(0x02, b"a") + raw(0x01, b"b"), 1002),
    ("opcode 3", raw(0x83, b"x"), 1002),
    ("opcode 7", raw(0x87), 1002),
    ("opcode 11", raw(0x8B, b"x"), 1002),
    ("opcode 15", raw(0x8F), 1002),
    ("invalid utf-8", raw(0x81, b"ok\xff"), 1007),
    ("surrogate utf-8", raw(0x81, "\ud800".encode("utf-8", "surrogatepass")), 1007),
    ("truncated utf-8", raw(0x81, "é".encode()[:1]), 1007),
    ("fragmented invalid utf-8", raw(0x01, b"\xe2\x98") + raw(0x80, b"x"), 1007),
    ("close code 1005", raw(0x88, close_payload(1005)), 1002),
    ("close code 1006", raw(0x88, close_payload(1006)), 1002),
    ("close code 999", raw(0x88, close_payload(999)), 1002),
    ("close code 0", raw(0x88, close_payload(0)), 1002),
    ("close code 2000", raw(0x88, close_payload(2000)), 1002),
    ("close code 5000", raw(0x88, close_payload(5000)), 1002),
    ("close 1-byte payload", raw(0x88, b"\x03"), 1002),
    ("close reason not utf-8", raw(0x88, close_payload(1000, b"\xff")), 1007),
    ("64-bit length top bit", b"\x82\xff" + (1 << 63).to_bytes(8, "big"), 1002),
    ("64-bit length all ones", b"\x82\xff" + b"\xff" * 8, 1002),
    ("too big, 16-bit", raw(0x82, b"x" * (SMALL + 1)), 1009),
    ("too big text", raw(0x81, b"x" * (SMALL + 1)), 1009),
    ("too big, 64-bit", raw(0x82, b"x" * 70000), 1009),
    ("too big in fragments", raw(0x02, b"x" * 600) + raw(0x80, b"x" * 401), 1009),
    ("too big in many fragments",
     raw(0x01, b"x" * 400) + raw(0x00, b"x" * 400) + raw(0x80, b"x" * 201), 1009),
]


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("data", "code"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_malformed(data, code, chunk):
    protocol = WebSocketProtocol(SMALL)
    sender = client()
    good = bytes(sender.send_data("before")) + bytes(sender.ping(b"hi"))
    assert feed(protocol, good + data, chunk) == ["before"]
    assert protocol.close_code == code
    assert protocol.close_reason
    output = server_frames(protocol.take_output())
    assert [f.opcode for f in output] == [Opcode.PONG, Opcode.CLOSE]
    assert output[1].payload[0] == code
    # Failed: everything after is ignored, and no second close frame is sent.
    assert protocol.receive(bytes(client().send_data("after"))) == []
    assert protocol.receive(bytes(client().close(1000))) == []
    assert protocol.close_code == code
    assert protocol.take_output() == b""
    assert protocol.close_frame(1000) == b""
    assert protocol._buffer == b""


def test_exactly_max_message_is_accepted():
    payload = b"x" * SMALL
    sender = client()
    data = bytes(sender.send_data(payload))
    data += bytes(sender.send_data(b"y" * 500, fin=False)) + bytes(sender.send_data(b"y" * 500))
    protocol = WebSocketProtocol(SMALL)
    assert protocol.receive(data) == [payload, b"y" * SMALL]
    assert protocol.close_code is None


@pytest.mark.parametrize("length", [SMALL + 1, 70000, 2**40])
def test_too_big_refused_from_header_alone(length):
    header = raw(0x82, length=length, masked=False)
    header = bytes((header[0], header[1] | 0x80)) + header[2:]  # masked, key not yet sent
    protocol = WebSocketProtocol(SMALL)
    assert protocol.receive(header) == []
    assert protocol.close_code == 1009
    assert_closed_with(protocol.take_output(), 1009)
    assert protocol._buffer == b""


def test_too_big_fragment_refused_from_its_header():
    protocol = WebSocketProtocol(SMALL)
    assert protocol.receive(raw(0x01, b"x" * 900)) == []
    assert protocol.close_code is None
    assert protocol.receive(b"\x80\xfe" + (101).to_bytes(2, "big")) == []
    assert protocol.close_code == 1009
    assert_closed_with(protocol.take_output(), 1009)
