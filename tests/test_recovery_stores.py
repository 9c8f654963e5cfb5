"""The recovery stores on their own: the packet log's offsets and bounds, the sessions'
expiry, and the offset splice on text and binary events."""

from __future__ import annotations

import pytest

from roomd import ConfigError
from roomd.protocol import sio
from roomd.rooms.recovery import (
    PacketLog,
    RecoveryOptions,
    SessionRecord,
    SessionStore,
    with_offset,
)

NONE: frozenset[str] = frozenset()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def log_of(clock: Clock, max_packets: int = 100, max_bytes: int = 10_000,
           max_age: float = 60) -> PacketLog:
    return PacketLog(max_packets, max_bytes, max_age, clock)


def add(log: PacketLog, n: object, rooms=NONE, except_rooms=NONE) -> str:
    message = log.append(sio.encode_event("/", ["ev", n]), frozenset(rooms),
                         frozenset(except_rooms))
    text = message.eio_parts[0]
    assert isinstance(text, str)
    return text.rpartition(",")[2][1:-2]  # the offset: the last JSON string


def decoded(message) -> list:
    packet = sio.Decoder().feed(message.eio_parts[0][1:])
    assert packet is not None
    return packet.data


def test_offsets_are_appended_and_parse_back():
    log = log_of(Clock())
    offsets = [add(log, i) for i in range(3)]
    assert [log.parse(o) for o in offsets] == [1, 2, 3]
    assert [decoded(m) for m in log.since(0, frozenset({"x"}))] == \
        [["ev", i, offsets[i]] for i in range(3)]


@pytest.mark.parametrize("offset", [None, 3, "", "-1", f"{'0' * 8}-1", "x" * 100,
                                    "{epoch}-0", "{epoch}-4", "{epoch}--1", "{epoch}-1.0",
                                    "{epoch}-" + "9" * 30, "{epoch}-１"])
def test_forged_offsets_are_not_found(offset):
    log = log_of(Clock())
    for i in range(3):
        add(log, i)
    if isinstance(offset, str):
        offset = offset.format(epoch=log.epoch)
    assert log.parse(offset) is None


def test_since_selects_by_rooms_and_except():
    log = log_of(Clock())
    add(log, "all")
    add(log, "a", rooms={"a"})
    add(log, "b", rooms={"b"})
    add(log, "a-or-b", rooms={"a", "b"})
    add(log, "all-but-me", except_rooms={"me"})
    add(log, "a-but-me", rooms={"a"}, except_rooms={"me"})
    mine = [decoded(m)[1] for m in log.since(0, frozenset({"me", "a"}))]
    assert mine == ["all", "a", "a-or-b"]
    assert [decoded(m)[1] for m in log.since(2, frozenset({"x", "a"}))] == \
        ["a-or-b", "all-but-me", "a-but-me"]


def test_bounds_in_packets_bytes_and_age():
    clock = Clock()
    log = log_of(clock, max_packets=3)
    for i in range(5):
        add(log, i)
    assert len(log) == 3 and log.dropped_through == 2
    anyone = frozenset({"x"})
    assert not log.complete_after(1, anyone)
    assert log.complete_after(2, anyone) and log.complete_after(5, anyone)
    assert not log.complete_after(6, anyone)  # not logged yet: forged

    log = log_of(clock, max_bytes=100)
    for _ in range(10):
        add(log, "x" * 20)
    assert 0 < log.bytes <= 100 and len(log) < 10
    add(log, "y" * 500)  # bigger than the whole log: it leaves at once
    assert len(log) == 0 and log.bytes == 0 and log.dropped_through == log.last_seq

    log = log_of(clock, max_age=10)
    add(log, 1)
    clock.now += 5
    add(log, 2)
    clock.now += 6
    add(log, 3)
    assert len(log) == 2 and log.dropped_through == 1
    clock.now += 20
    log.trim()
    assert len(log) == 0 and log.dropped_through == 3


def test_binary_events_keep_their_attachments():
    parts = sio.encode_event("/n", ["ev", b"\x00\x01", {"k": b"\x02"}])
    spliced = with_offset(parts, "e-7")
    assert spliced[1:] == parts[1:]
    decoder = sio.Decoder()
    assert decoder.feed(spliced[0]) is None
    assert decoder.feed(spliced[1]) is None
    packet = decoder.feed(spliced[2])
    assert packet is not None and packet.data == ["ev", b"\x00\x01", {"k": b"\x02"}, "e-7"]


def record(pid: str) -> SessionRecord:
    return SessionRecord(f"sid-{pid}", pid, frozenset({f"sid-{pid}"}), {}, 0)


def test_sessions_expire_and_are_bounded():
    clock = Clock()
    store = SessionStore(max_sessions=3, max_age=10, clock=clock)
    for pid in "abcd":
        store.put(record(pid))
    assert list(store.sessions) == ["b", "c", "d"]
    assert store.sids == {"sid-b", "sid-c", "sid-d"}
    clock.now += 5
    store.put(record("e"))
    assert list(store.sessions) == ["c", "d", "e"]
    clock.now += 6
    assert store.pop("c") is None  # expired
    assert store.pop("e").sid == "sid-e"
    assert store.pop("e") is None  # restored at most once
    assert store.pop(["e"]) is None and store.pop(None) is None
    assert store.sids == set() and not store.sessions  # d expired too


def test_options():
    assert RecoveryOptions.from_value(None) is None
    assert RecoveryOptions.from_value(False) is None
    assert RecoveryOptions.from_value(True) == RecoveryOptions()
    opts = RecoveryOptions.from_value({"max_disconnection_duration": 5,
                                       "namespaces": ["/a"]})
    assert opts is not None and opts.covers("/a") and not opts.covers("/b")
    assert RecoveryOptions().covers("/anything")
    assert RecoveryOptions.from_value({"namespaces": "/a"}).namespaces == frozenset({"/a"})
    for bad in ({"max_disconnection_duration": 0}, {"max_packets": 0}, {"nope": 1}, 3):
        with pytest.raises(ConfigError):
            RecoveryOptions.from_value(bad)  # type: ignore[arg-type]


def test_a_quiet_socket_in_a_busy_namespace_stays_recoverable():
    log = log_of(Clock(), max_packets=3)
    add(log, "for a", rooms={"a"})  # seq 1: the quiet socket's offset
    for i in range(5):
        add(log, i, rooms={"b"}, except_rooms={"me"})  # seq 2..6; 1..3 leave the log
    assert log.dropped_through == 3 and log.dropped_rooms == {"a": 1, "b": 3}
    quiet = frozenset({"me", "a"})
    assert log.complete_after(1, quiet)  # nothing it could have missed was dropped
    assert list(log.since(1, quiet)) == []
    assert not log.complete_after(1, frozenset({"you", "b"}))
    assert log.complete_after(3, frozenset({"you", "b"}))
    assert not log.complete_after(0, quiet)  # "for a" itself left the log
    add(log, "everyone")  # seq 7
    add(log, "x", rooms={"c"})
    add(log, "y", rooms={"c"})
    add(log, "z", rooms={"c"})  # "everyone" (seq 7) leaves
    assert log.dropped_all == 7 and not log.complete_after(6, quiet)


def test_dropped_rooms_are_bounded():
    log = log_of(Clock(), max_packets=2)
    for i in range(10):
        add(log, i, rooms={f"room-{i}"})
    assert len(log.dropped_rooms) == 2 and log.dropped_floor == 6
    assert list(log.dropped_rooms) == ["room-6", "room-7"]
    assert not log.complete_after(5, frozenset({"elsewhere"}))  # below the floor: unknown
    assert log.complete_after(6, frozenset({"elsewhere"}))
