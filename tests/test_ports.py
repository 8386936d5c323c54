"""Loopback ports: free, distinct per mesh and across meshes, and conflicts explained."""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from lablib.errors import BackendError, ProxyRejectedError
from lablib.local.ports import (
    PortAllocator,
    PortInUseError,
    allocate_port,
    is_address_in_use,
    port_accepts,
    port_in_use,
    port_owner,
    registry_dir,
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


# --- the machine-wide registry: meshes never hand out each other's ports -------------------

HOLDER = """
import sys
from pathlib import Path
from lablib.local.ports import PortAllocator
allocator = PortAllocator(registry=Path(sys.argv[1]))
print(" ".join(str(allocator.allocate()) for _ in range(20)), flush=True)
sys.stdin.read()
"""


def offering(monkeypatch: pytest.MonkeyPatch, offers: list[int]) -> None:
    """Make the kernel offer `offers` first, then whatever it likes."""
    pending = list(offers)
    real = allocate_port
    monkeypatch.setattr("lablib.local.ports.allocate_port",
                        lambda host: pending.pop(0) if pending else real(host))


def test_two_allocators_never_share_a_port(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = PortAllocator(registry=tmp_path), PortAllocator(registry=tmp_path)
    offering(monkeypatch, [40001, 40001, 40001, 40002])
    assert first.allocate() == 40001
    assert second.allocate() == 40002  # 40001 is free in the kernel but held by `first`
    first.release(40001)
    offering(monkeypatch, [40001])
    assert second.allocate() == 40001  # released: anyone may have it now


def test_ports_held_by_another_process_are_skipped_until_it_dies(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        held = [int(p) for p in holder.stdout.readline().split()]
        assert len(held) == 20
        allocator = PortAllocator(registry=tmp_path)
        offering(monkeypatch, held)
        assert allocator.allocate() not in held
    finally:
        holder.kill()
        holder.wait()
    offering(monkeypatch, held[:1])
    assert PortAllocator(registry=tmp_path).allocate() == held[0]  # a dead process holds nothing
    assert not list(tmp_path.glob(f"*-{holder.pid}-*.ports"))  # and its file is gone


def test_the_registry_file_follows_allocations_and_close(tmp_path) -> None:
    allocator = PortAllocator(registry=tmp_path)
    assert allocator.registry is not None
    ports = {allocator.allocate() for _ in range(3)}
    recorded = allocator.registry.file
    assert {int(p) for p in recorded.read_text().split()} == ports
    allocator.release(min(ports))
    assert {int(p) for p in recorded.read_text().split()} == ports - {min(ports)}
    allocator.close()
    assert not recorded.exists() and allocator.allocated() == set()
    other = PortAllocator(registry=tmp_path)
    other.allocate()
    assert other.registry is not None
    path = other.registry.file
    del other
    gc.collect()
    assert not path.exists()  # an allocator nobody closed still leaves the registry


def test_a_fresh_registry_folder_is_shared_like_tmp(tmp_path) -> None:
    folder = tmp_path / "ports"
    PortAllocator(registry=folder).allocate()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o1777


def test_an_unusable_registry_only_costs_the_cross_mesh_reservation(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    allocator = PortAllocator(registry=blocker)
    assert allocator.registry is not None and not allocator.registry.usable
    assert "unusable" in caplog.text
    assert len({allocator.allocate() for _ in range(5)}) == 5


def test_a_private_allocator_records_nothing(tmp_path) -> None:
    allocator = PortAllocator(registry=tmp_path, shared=False)
    allocator.allocate()
    assert list(tmp_path.iterdir()) == []


def test_the_registry_defaults_to_one_folder_per_machine(monkeypatch) -> None:
    monkeypatch.delenv("LAB_PORTS_DIR", raising=False)
    assert registry_dir() == Path(tempfile.gettempdir()) / "istio-lab-kit-ports"
    monkeypatch.setenv("LAB_PORTS_DIR", "/somewhere/else")
    assert registry_dir() == Path("/somewhere/else")


def test_a_lost_port_race_is_retried_unless_the_manifest_chose_the_port() -> None:
    from lablib.config.model import Resource
    from lablib.local.mesh import LocalMesh

    service = Resource("Service", "gw", "istio-system", {"spec": {"ports": [
        {"name": "http", "port": 80, "nodePort": 31000}]}})
    nack = ProxyRejectedError("Envoy refused: cannot bind '127.0.0.1:{}': Address already in use")
    assert LocalMesh._lost_port(ProxyRejectedError(str(nack).format(45000)), [service]) == 45000
    assert LocalMesh._lost_port(ProxyRejectedError(str(nack).format(31000)), [service]) is None
    assert LocalMesh._lost_port(ProxyRejectedError("unknown field"), [service]) is None
    assert LocalMesh._lost_port(BackendError("OSError: [Errno 98] Address already in use"),
                                []) == 0


# --- a registry other users can write to: what is planted there counts for nothing ----------


def test_a_claim_beyond_the_cap_is_ignored(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                           caplog) -> None:
    """A file claiming every port under a live process must not stop a mesh from starting."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / f"{os.geteuid()}-{holder.pid}-x.ports").write_text(
            " ".join(str(p) for p in range(1024, 65536)))
        allocator = PortAllocator(registry=tmp_path)
        offering(monkeypatch, [40001])
        assert allocator.allocate() == 40001
        assert "claims more than" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_in_the_name_of_a_user_who_does_not_run_the_pid_is_ignored(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    other_uid = os.geteuid() + 4242
    (tmp_path / f"{other_uid}-{os.getpid()}-x.ports").write_text("40001")
    offering(monkeypatch, [40001])
    assert PortAllocator(registry=tmp_path).allocate() == 40001


def test_a_planted_link_is_never_followed_nor_removed(tmp_path) -> None:
    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    registry = tmp_path / "ports"
    registry.mkdir()
    for n in range(4):  # every name the old registry would have written
        (registry / f".{os.geteuid()}-{os.getpid()}-{n}.ports.tmp").symlink_to(victim)
        (registry / f"{os.geteuid()}-{os.getpid()}-{n}.ports").symlink_to(victim)
    allocator = PortAllocator(registry=registry)
    allocator.allocate()
    allocator.close()
    assert victim.read_text() == "mine\n"
    assert len([p for p in registry.iterdir() if p.is_symlink()]) == 8


def test_a_lock_held_for_ever_turns_the_registry_off(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr("lablib.local.ports.LOCK_WAIT_S", 0.2)
    allocator = PortAllocator(registry=tmp_path)
    (tmp_path / "lock").touch()
    with open(tmp_path / "lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert len({allocator.allocate() for _ in range(3)}) == 3
    assert allocator.registry is not None and not allocator.registry.usable
    assert "lock busy" in caplog.text


def test_a_registry_that_fails_while_in_use_turns_off_and_allocation_goes_on(
        tmp_path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    allocator = PortAllocator(registry=tmp_path)
    allocator.allocate()

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("lablib.local.ports.tempfile.mkstemp", refuse)
    assert len({allocator.allocate() for _ in range(3)}) == 3
    assert allocator.registry is not None and not allocator.registry.usable
    assert "cannot record held ports" in caplog.text
