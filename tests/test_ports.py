"""Loopback ports: free, distinct per mesh, and conflicts explained."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from lablib.errors import BackendError
from lablib.local.ports import (
    PortAllocator,
    PortInUseError,
    allocate_port,
    is_address_in_use,
    port_accepts,
    port_in_use,
    port_owner,
    wait_for_port,
    with_free_port,
)


def listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_allocated_port_is_bindable() -> None:
    port = allocate_port()
    assert 1024 < port < 65536
    assert not port_in_use(port)
    with listener(port):
        assert port_in_use(port)
        assert port_accepts(port)
    assert not port_in_use(port)


def test_allocator_never_repeats_a_port_in_use() -> None:
    allocator = PortAllocator()
    held = [allocator.allocate() for _ in range(200)]
    assert len(set(held)) == 200
    assert allocator.allocated() == set(held)
    allocator.release(held[0])
    allocator.release(12345)  # never handed out: harmless
    assert held[0] not in allocator.allocated()
    assert len(allocator.allocated()) == 199


def test_allocator_is_thread_safe() -> None:
    allocator = PortAllocator()
    got: list[int] = []

    def grab() -> None:
        got.extend(allocator.allocate() for _ in range(25))

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 100 == len(set(got))


def test_allocator_skips_its_own_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may offer a port again once its probe socket is closed; the allocator must not.
    offers = iter([40001, 40001, 40002])
    monkeypatch.setattr("lablib.local.ports.allocate_port", lambda host: next(offers))
    allocator = PortAllocator()
    assert [allocator.allocate(), allocator.allocate()] == [40001, 40002]


def test_allocator_gives_up_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lablib.local.ports.allocate_port", lambda host: 40001)
    allocator = PortAllocator(attempts=3)
    assert allocator.allocate() == 40001
    with pytest.raises(BackendError, match="no free loopback port"):
        allocator.allocate()


def test_wait_for_port() -> None:
    port = allocate_port()
    assert not wait_for_port(port, timeout=0.1)
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    timer = threading.Timer(0.1, s.listen)
    timer.start()
    try:
        assert wait_for_port(port, timeout=2.0)
    finally:
        timer.join()
        s.close()


def test_conflict_names_the_port_and_the_program() -> None:
    with listener() as s:
        port = s.getsockname()[1]
        assert port_owner(port).startswith(f"pid {os.getpid()} (")
        text = str(PortInUseError(port))
    assert f"port {port} is already in use by another program (pid {os.getpid()}" in text
    assert "fix:" in text
    assert port_owner(port) == ""


def test_address_in_use_is_recognised() -> None:
    assert is_address_in_use(OSError(errno.EADDRINUSE, "Address already in use"))
    assert is_address_in_use(
        BackendError("envoy: cannot bind '127.0.0.1:1': Address already in use")
    )
    assert is_address_in_use(PortInUseError(1))
    assert not is_address_in_use(OSError(errno.EACCES, "Permission denied"))


def test_with_free_port_retries_when_another_program_wins_the_race() -> None:
    allocator = PortAllocator()
    tried: list[int] = []
    thief = listener()  # another program that grabbed the first port we were given

    def start(port: int) -> socket.socket:
        tried.append(port)
        if len(tried) == 1:
            port = thief.getsockname()[1]  # simulate losing the race on this attempt
        return listener(port)

    try:
        port, server = with_free_port(start, allocator)
        with server:
            assert len(tried) == 2 and port == tried[1]
            assert allocator.allocated() == {port}  # the lost port went back
    finally:
        thief.close()


def test_with_free_port_does_not_hide_other_errors() -> None:
    allocator = PortAllocator()

    def start(port: int) -> None:
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        with_free_port(start, allocator)
    assert allocator.allocated() == set()


def test_with_free_port_gives_up_after_attempts() -> None:
    def start(port: int) -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    with pytest.raises(BackendError, match="3 free ports in a row"):
        with_free_port(start, PortAllocator(), attempts=3)
