"""The shared counters of roomd/transport/limits.py, alone: budget, admission, rate logs,
and the client address behind a trusted proxy. The live attacks are in test_hostile.py."""

from __future__ import annotations

import logging

from roomd.transport.limits import Admission, Budget, RateLog, client_address


def test_budget_refuses_past_its_limit_and_counts_what_exists():
    budget = Budget(100)
    assert budget.take(60) and budget.take(40)
    assert not budget.take(1) and budget.used == 100
    budget.hold(10)  # bytes that exist already are counted even past the limit
    assert budget.used == 110 and budget.peak == 110
    budget.give(110)
    assert budget.used == 0 and budget.take(100)
    assert Budget(0).take(10**12)  # 0: unlimited
    budget.hold(30)  # over the limit (130): a negative take still gives back
    assert budget.take(-50) and budget.used == 80 and budget.take(0)


def test_connections_per_address_and_exemptions():
    admission = Admission(connections_per_ip=2, sessions_per_ip_rate=0, sessions_per_ip_burst=0,
                          max_half_open=0, exempt=("127.0.0.1", "0:0:0:0:0:0:0:1"))
    assert admission.connect("10.0.0.1") and admission.connect("10.0.0.1")
    assert not admission.connect("10.0.0.1")
    assert admission.connect("10.0.0.2")
    admission.disconnect("10.0.0.1")
    assert admission.connect("10.0.0.1")
    assert all(admission.connect("127.0.0.1") for _ in range(10))
    assert all(admission.connect("::1") for _ in range(10))  # exemptions are normalised
    for _ in range(2):
        admission.disconnect("10.0.0.1")
    admission.disconnect("10.0.0.2")
    assert admission.connections == {}


def test_half_open_cap():
    admission = Admission(connections_per_ip=0, sessions_per_ip_rate=0, sessions_per_ip_burst=0,
                          max_half_open=2)
    assert admission.open_half() and admission.open_half() and not admission.open_half()
    admission.close_half()
    assert admission.open_half()
    # the accept loop waiting for room is called back once a connection ends below the cap
    called: list[bool] = []
    admission.on_room = lambda: called.append(admission.has_room())
    assert not admission.has_room()
    admission.close_half()
    assert called == [True] and admission.has_room()


def test_new_sessions_token_bucket():
    now = [1000.0]
    admission = Admission(connections_per_ip=0, sessions_per_ip_rate=2.0,
                          sessions_per_ip_burst=3, max_half_open=0, clock=lambda: now[0])
    assert [admission.new_session("10.0.0.1") for _ in range(3)] == [0.0] * 3
    wait = admission.new_session("10.0.0.1")
    assert wait == 0.5  # one token comes back every 1 / rate seconds
    assert admission.new_session("10.0.0.2") == 0.0  # another address has its own bucket
    now[0] += 0.5
    assert admission.new_session("10.0.0.1") == 0.0
    now[0] += 100  # refills up to the burst, not beyond
    assert [admission.new_session("10.0.0.1") for _ in range(4)][-1] > 0


def test_rate_log_logs_the_first_then_a_count(caplog):
    caplog.set_level(logging.INFO, logger="roomd.limits")
    scheduled = []
    log = RateLog(lambda delay, fn, *args: scheduled.append((delay, fn, args)), interval=10)
    for i in range(2000):
        log.note("duplicate CONNECT", f"10.0.0.{i % 3}", f"number {i}")
    assert [r.getMessage() for r in caplog.records] == [
        "duplicate CONNECT from 10.0.0.0: number 0"]
    delay, fn, args = scheduled.pop()
    assert delay == 10
    fn(*args)  # the window closes
    assert caplog.records[-1].getMessage() == (
        "duplicate CONNECT: 1999 more in the last 10 s from 3 address(es)")
    log.note("duplicate CONNECT", "10.0.0.9", "again")  # a new window logs at once
    assert caplog.records[-1].getMessage() == "duplicate CONNECT from 10.0.0.9: again"
    fn(*scheduled.pop()[2])
    assert len(caplog.records) == 3  # nothing more to say: no count line


def test_client_address_only_from_trusted_proxies():
    trusted = frozenset({"127.0.0.1", "10.0.0.5"})
    assert client_address("127.0.0.1", "203.0.113.7", trusted) == "203.0.113.7"
    # Read from the right; what the client wrote on the left does not count.
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.7", trusted) == "203.0.113.7"
    assert client_address("127.0.0.1", "203.0.113.7, 10.0.0.5", trusted) == "203.0.113.7"
    assert client_address("198.51.100.1", "203.0.113.7", trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", "not an address", trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.7", frozenset()) == "127.0.0.1"
