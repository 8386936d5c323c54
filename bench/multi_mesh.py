"""1, 5 and 10 Bookinfo meshes at once, as on a JupyterHub with that many students.

Each mesh is brought up by its own Python process (standing in for a notebook kernel) with
its own LAB_MESH, all started together: install, an injected namespace, Bookinfo and its
gateway, then the first 200 from /productpage. Reported: the wall time until every mesh
served its first page, each mesh's own bring-up time, and the total PSS of every mesh
process (meshd, Envoys, apps) once all are up. Every mesh is uninstalled before the next size.

`python -m bench.multi_mesh --sizes 10 --repeat 3` brings up 10 meshes three times over and
reports how many of the runs had every mesh up (the pass rate), with the figures of each.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from lablib.config.loader import KIT_ROOT

from .machine import machine_info
from .memory import MIB, memory_of
from .stats import median

SIZES = (1, 5, 10)
AIM_BYTES = 8 * 1024 * MIB  # ten meshes should fit in 8 GiB
KERNEL = textwrap.dedent("""\
    import sys, time
    start = time.perf_counter()
    import httpx
    import lablib

    mesh = lablib.connect()
    try:
        mesh.install()
        mesh.create_namespace("bookinfo-test", {"istio-injection": "enabled"})
        mesh.apply("samples/bookinfo/platform/kube/bookinfo.yaml", namespace="bookinfo-test")
        mesh.apply("samples/bookinfo/networking/bookinfo-gateway.yaml",
                   namespace="bookinfo-test")
        host, port = mesh.ingress_address()
        url = f"http://{host}:{port}/productpage"
        # The first page must come from this mesh: a port shared with another mesh's Envoy
        # (SO_REUSEPORT) would answer some requests with the other mesh's 404.
        while True:
            try:
                if httpx.get(url, trust_env=False, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        bring_up = time.perf_counter() - start
        codes = {httpx.get(url, trust_env=False, timeout=10).status_code for _ in range(20)}
        assert codes == {200}, f"after its first 200 the gateway answered {codes}"
        # Ports another program took before the mesh bound them: meshd applied again.
        log = (mesh.state.logs / "meshd.log").read_text()
        retries = log.count("with fresh ports") + log.count("starting it again")
        print(f"ready {bring_up:.3f} {retries}", flush=True)
        sys.stdin.read()  # hold the mesh until the benchmark closes our stdin
    finally:
        mesh.uninstall()
    """)


@dataclass(frozen=True)
class Meshes:
    """What `count` meshes at once cost."""

    count: int
    wall_s: float  # from starting the kernels to the last first 200
    bring_up_s: list[float]  # each kernel's own connect() to first 200
    retries: int  # changes meshd applied again because another program took a port first
    processes: int
    pss: int  # total over every mesh process, bytes
    kernel_pss: int  # total over the kernels (the notebook stand-ins), bytes


def _tagged(root: str) -> set[int]:
    """Processes started for meshes under LAB_STATE_DIR=`root`."""
    marks = (f"LAB_STATE_DIR={root}".encode(), f"LAB_SUPERVISOR_DIR={root}/".encode())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(var == marks[0] or var.startswith(marks[1]) for var in environ):
            found.add(int(entry.name))
    return found


def _wait_ready(kernels: list[subprocess.Popen[str]], logs: list[Path],
                timeout: float) -> list[tuple[float, int]]:
    """Each kernel's bring-up seconds and retries, as it prints them; raises if one fails or
    is late."""
    times: dict[int, tuple[float, int]] = {}
    deadline = time.monotonic() + timeout
    while len(times) < len(kernels):
        waiting = {k.stdout: i for i, k in enumerate(kernels) if i not in times}
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(waiting)} of {len(kernels)} meshes not up in {timeout:.0f}s")
        for pipe in select.select(list(waiting), [], [], left)[0]:
            index = waiting[pipe]
            line = pipe.readline() if pipe is not None else ""
            if not line.startswith("ready "):
                tail = logs[index].read_text()[-1500:]
                raise RuntimeError(f"mesh {index} failed to come up (exit "
                                   f"{kernels[index].wait(10)}); {logs[index]} ends:\n{tail}")
            _, seconds, retries = line.split()
            times[index] = (float(seconds), int(retries))
    return [times[i] for i in range(len(kernels))]


def measure(count: int, workdir: Path) -> Meshes:
    """Bring up `count` Bookinfo meshes at once, measure them, tear them all down."""
    root = tempfile.mkdtemp(prefix="mm-")  # short: meshd's socket path has a length limit
    kernels: list[subprocess.Popen[str]] = []
    logs = [workdir / f"multi-{count}-{i}.log" for i in range(count)]
    try:
        start = time.perf_counter()
        for i in range(count):
            env = dict(os.environ, LAB_MESH=f"bench-multi-{i}", LAB_STATE_DIR=root)
            with open(logs[i], "w") as log:
                kernels.append(subprocess.Popen(
                    [sys.executable, "-c", KERNEL], env=env, cwd=KIT_ROOT, text=True,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log))
        ready = _wait_ready(kernels, logs, 120 + 30 * count)
        wall = time.perf_counter() - start
        time.sleep(2)  # let the last pushes and page caches settle
        kernel_pids = {k.pid for k in kernels}
        memories = {pid: m for pid in _tagged(root) if (m := memory_of(pid)) is not None}
        mesh = [m for pid, m in memories.items() if pid not in kernel_pids]
        return Meshes(count, wall, [r[0] for r in ready], sum(r[1] for r in ready), len(mesh),
                      sum(m.pss for m in mesh),
                      sum(m.pss for pid, m in memories.items() if pid in kernel_pids))
    finally:
        for kernel in kernels:
            if kernel.stdin is not None:
                kernel.stdin.close()
        for kernel in kernels:
            try:
                kernel.wait(60)
            except subprocess.TimeoutExpired:
                kernel.kill()  # its meshd sees its owner die and tears the mesh down
                kernel.wait()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Bring up each size `--repeat` times; print each run's figures and the pass rate."""
    parser = argparse.ArgumentParser(prog="python -m bench.multi_mesh")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="multi-") as tmp:
        for count in args.sizes:
            passed = 0
            for run_number in range(1, args.repeat + 1):
                started = time.perf_counter()
                try:
                    r = measure(count, Path(tmp))
                except Exception as exc:  # a failed run is the figure we are after
                    print(f"{count} meshes, run {run_number}: FAILED after "
                          f"{time.perf_counter() - started:.0f} s: {exc}", flush=True)
                    continue
                passed += 1
                print(f"{count} meshes, run {run_number}: all up in {r.wall_s:.1f} s; bring-up "
                      f"median {median(r.bring_up_s):.1f} s, max {max(r.bring_up_s):.1f} s; "
                      f"{r.retries} ports lost and retried; {r.processes} processes, "
                      f"PSS {_gib(r.pss)} GiB ({r.pss / count / MIB:.0f} MiB per mesh), "
                      f"kernels {r.kernel_pss / MIB:.0f} MiB; load {os.getloadavg()[0]:.1f}",
                      flush=True)
            print(f"{count} meshes: {passed} of {args.repeat} runs had every mesh up", flush=True)
    return 0


def _gib(value: float) -> str:
    return f"{value / 1024 / MIB:.2f}"


def run(workdir: Path) -> str:
    """1, 5 and 10 meshes at once; a Markdown section with the figures and the machine."""
    machine = machine_info()
    load_start = os.getloadavg()[0]
    results = [measure(count, workdir) for count in SIZES]
    lines = [
        "## Many meshes on one machine",
        "",
        f"Machine: {machine['nproc']} cores ({machine['CPU']}), {machine['RAM']} RAM, Python "
        f"{machine['Python']}; load average {load_start:.2f} → {os.getloadavg()[0]:.2f} "
        "(other work on the machine slows bring-up).",
        "",
        "N kernels start together, each bringing up its own Bookinfo mesh (own LAB_MESH): "
        "install, Bookinfo, gateway, first 200 from /productpage. Memory is the total PSS of "
        "every mesh process (meshd, Envoys, apps) once all meshes are up; the kernels "
        "(Python processes holding `lablib`) are counted apart.",
        "",
        "| meshes | wall time to all up, s | each mesh's bring-up, median / max s "
        "| ports lost and retried | mesh processes | total PSS, GiB | PSS per mesh, MiB "
        "| kernels' PSS, MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.count} | {r.wall_s:.1f} | {median(r.bring_up_s):.1f} / {max(r.bring_up_s):.1f} "
            f"| {r.retries} | {r.processes} | {_gib(r.pss)} | {r.pss / r.count / MIB:.0f} "
            f"| {r.kernel_pss / MIB:.0f} |")
    ten = results[-1]
    total = ten.pss + ten.kernel_pss
    verdict = "met" if total <= AIM_BYTES else "NOT met"
    lines += [
        "",
        f"Aim: {ten.count} meshes fit in 8 GiB: {verdict} ({_gib(total)} GiB with their "
        f"kernels, {_gib(ten.pss)} GiB without). Bring-up is CPU-bound: {ten.count} meshes "
        f"start {ten.processes} processes on {machine['nproc']} cores.",
        "",
        "Ports: every mesh reserves the loopback ports it picks in a machine-wide registry "
        "(`lablib/local/ports.py`), so meshes starting together never pick the same one; a "
        "port another program binds first makes meshd roll the change back and apply it "
        "again with fresh ports (counted above). The kernels do not retry anything.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
