"""Memory per sidecar Envoy next to a bare Envoy, measured side by side in one run.

Memory is read from /proc/<pid>/smaps_rollup: RSS (what `top` shows, shared binary pages
counted in full), PSS (shared pages split among the processes sharing them: the fair share)
and USS (private pages only: what one more such process costs). The sidecars are Bookinfo's,
idle and then under load through the ingress gateway; the bare Envoys run a minimal static
config (an admin port and nothing else) at the same time, so both share the same binary pages.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

import lablib
from lablib.backend import Backend
from lablib.load import load
from lablib.local.admin import envoy_live
from lablib.local.bootstrap import envoy_argv, write_bootstrap

from . import envoy_baseline as bare
from .machine import machine_info
from .mesh_bench import BOOKINFO_NS, SAMPLES, isolated_mesh
from .stats import median, wait_until

MIB = 1024 * 1024
BARE_ENVOYS = 3
LOAD_SECONDS = 10
LOAD_CONNECTIONS = 4
POD_HASH = re.compile(r"-[0-9a-f]{10}-[a-z0-9]{5}\b")
ISTIO_PUBLISHED = ("Istio 1.24's performance page: about 0.20 vCPU and 60 MB of memory per "
                   "1000 requests per second through a sidecar")


@dataclass(frozen=True)
class Memory:
    """One process's memory in bytes."""

    rss: int
    pss: int
    uss: int  # private pages: Private_Clean + Private_Dirty


def memory_of(pid: int) -> Memory | None:
    """RSS, PSS and USS of `pid` from /proc/<pid>/smaps_rollup (None if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            kib[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return Memory(kib.get("Rss", 0), kib.get("Pss", 0),
                  kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0))


def open_fds(pid: int) -> int | None:
    """How many file descriptors `pid` has open (None if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def short_name(process: str) -> str:
    """A process name without its pod hash: `bookinfo-test.reviews-v1.istio-proxy`."""
    return POD_HASH.sub("", process)


def mesh_pids(mesh: Backend) -> dict[str, int]:
    """Every running process of a local mesh by name, meshd included."""
    pids = {row["name"]: int(row["pid"]) for row in mesh.processes()  # type: ignore[attr-defined]
            if row.get("pid")}
    pids["meshd"] = int(mesh.call("ping")["pid"])  # type: ignore[attr-defined]
    return pids


@contextmanager
def named_mesh(name: str) -> Iterator[list[Backend]]:
    """`isolated_mesh()` (a fresh LAB_STATE_DIR, uninstalled after) with LAB_MESH=`name`."""
    previous = os.environ.get("LAB_MESH")
    os.environ["LAB_MESH"] = name
    try:
        with isolated_mesh() as started:
            yield started
    finally:
        if previous is None:
            os.environ.pop("LAB_MESH", None)
        else:
            os.environ["LAB_MESH"] = previous


def bookinfo_mesh(started: list[Backend]) -> tuple[Backend, str]:
    """A mesh with Bookinfo behind the ingress gateway; returns it and the /productpage URL."""
    mesh = lablib.connect()
    started.append(mesh)
    mesh.install()
    mesh.create_namespace(BOOKINFO_NS, {"istio-injection": "enabled"})
    mesh.apply(f"{SAMPLES}/bookinfo/platform/kube/bookinfo.yaml", namespace=BOOKINFO_NS)
    mesh.apply(f"{SAMPLES}/bookinfo/networking/bookinfo-gateway.yaml", namespace=BOOKINFO_NS)
    host, port = mesh.ingress_address()
    url = f"http://{host}:{port}/productpage"
    wait_until(lambda: httpx.get(url, trust_env=False, timeout=5).status_code == 200, 60,
               "first 200 from /productpage", step=0.05)
    return mesh, url


@contextmanager
def bare_envoy(workdir: Path, name: str) -> Iterator[int]:
    """An Envoy with only an admin port, LIVE; yields its pid."""
    admin = str(workdir / f"{name}.sock")
    path = write_bootstrap(workdir / f"{name}.json", bare.minimal_config(admin))
    with bare.process(envoy_argv(path), workdir / f"{name}.log") as proc:
        wait_until(lambda: envoy_live(admin), 20, f"bare Envoy {name} LIVE", step=0.01)
        yield proc.pid


def _mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def _row(label: str, memories: list[Memory]) -> str:
    """A table row with the median RSS, PSS and USS of `memories`."""
    return (f"| {label} | {_mib(median([m.rss for m in memories]))} "
            f"| {_mib(median([m.pss for m in memories]))} "
            f"| {_mib(median([m.uss for m in memories]))} |")


def _sample(pids: dict[str, int]) -> dict[str, Memory]:
    return {name: m for name, pid in pids.items() if (m := memory_of(pid)) is not None}


def run(workdir: Path) -> str:
    """Sidecar and bare Envoy memory in one run; a Markdown section with the machine."""
    with named_mesh("bench-memory") as started, ExitStack() as stack:
        mesh, url = bookinfo_mesh(started)
        bare_pids = {f"bare-{i}": stack.enter_context(bare_envoy(workdir, f"bare-envoy-{i}"))
                     for i in range(BARE_ENVOYS)}
        load(url, connections=1, n=20)  # every sidecar has served a request before "idle"
        time.sleep(2)
        pids = mesh_pids(mesh)
        idle, bare_memory = _sample(pids), _sample(bare_pids)
        busy: dict[str, Memory] = {}
        gateway = next(n for n in pids if n.startswith("istio-system.istio-ingressgateway"))
        product = next(n for n in pids if ".productpage-v1-" in n and n.endswith("istio-proxy"))
        cpu_before = {n: cpu_seconds(pids[n]) for n in (gateway, product)}

        def sample_late() -> None:  # memory near the end of the load, while it still runs
            time.sleep(LOAD_SECONDS * 0.9)
            busy.update(_sample(pids))

        sampler = threading.Thread(target=sample_late)
        sampler.start()
        result = load(url, connections=LOAD_CONNECTIONS, duration=LOAD_SECONDS, timeout=10)
        sampler.join()
        cpu = {n: cpu_seconds(pids[n]) - cpu_before[n] for n in (gateway, product)}
    rps = len(result.frame) / result.elapsed_s
    ok = sum(count for code, count in result.codes().items() if code == 200)
    sidecars = [m for n, m in idle.items() if n.endswith(".istio-proxy")
                and n.startswith(f"{BOOKINFO_NS}.")]
    busy_sidecars = [m for n, m in busy.items() if n.endswith(".istio-proxy")
                     and n.startswith(f"{BOOKINFO_NS}.")]
    apps = [m for n, m in idle.items() if n.startswith(f"{BOOKINFO_NS}.")
            and not n.endswith(".istio-proxy")]
    bare_list = list(bare_memory.values())
    ratio_pss = median([m.pss for m in sidecars]) / median([m.pss for m in bare_list])
    ratio_uss = median([m.uss for m in sidecars]) / median([m.uss for m in bare_list])
    # The productpage sidecar carries each page three times: in from the gateway, out to
    # details and out to reviews.
    per_1000 = {gateway: cpu[gateway] / result.elapsed_s / (rps / 1000),
                product: cpu[product] / result.elapsed_s / (3 * rps / 1000)}
    machine = machine_info()
    lines = [
        "## Memory per sidecar",
        "",
        f"Machine: {machine['nproc']} cores ({machine['CPU']}), {machine['RAM']} RAM, Envoy "
        f"{machine['Envoy'].split('/')[1] if '/' in machine['Envoy'] else machine['Envoy']}, "
        f"Python {machine['Python']}, load average {os.getloadavg()[0]:.2f}.",
        "",
        f"One Bookinfo mesh ({len(sidecars)} sidecars) and {BARE_ENVOYS} bare Envoys (admin "
        "port only, `--concurrency 1`) running at the same time, so every Envoy shares the same "
        "binary pages. Medians, MiB, from /proc/<pid>/smaps_rollup; USS = private pages only.",
        "",
        "| process | RSS | PSS | USS |",
        "|---|---|---|---|",
        _row(f"bare Envoy, median of {len(bare_list)}", bare_list),
        _row(f"sidecar Envoy, idle, median of {len(sidecars)}", sidecars),
        _row(f"sidecar Envoy, under load, median of {len(busy_sidecars)}", busy_sidecars),
        _row("ingress gateway Envoy, idle", [idle[gateway]]),
        _row("ingress gateway Envoy, under load", [busy[gateway]]),
        _row(f"Python app, idle, median of {len(apps)}", apps),
        _row("meshd (control plane, store, supervisor)", [idle["meshd"]]),
        "",
        f"**Sidecar / bare Envoy: PSS {ratio_pss:.2f}×, USS {ratio_uss:.2f}×** (the sidecar "
        "holds its listeners, clusters, routes, SDS certificates and an access log).",
        "",
        f"A whole Bookinfo mesh (every process above but the bare Envoys, meshd included): "
        f"PSS {_mib(sum(m.pss for m in idle.values()))} MiB idle.",
        "",
        f"Under load: {LOAD_SECONDS} s of `lablib.load` with {LOAD_CONNECTIONS} connections to "
        f"/productpage through the ingress gateway, {rps:.0f} pages/s ({ok} of "
        f"{len(result.frame)} answered 200; the Python apps set the pace). CPU per 1000 "
        f"requests/s through the proxy: ingress gateway {per_1000[gateway]:.2f} vCPU, "
        f"productpage sidecar {per_1000[product]:.2f} vCPU (it carries each page three times).",
        "",
        f"For comparison, {ISTIO_PUBLISHED}. What differs: Istio measures at 1000 rps with "
        "1 KB payloads, 2 worker threads and telemetry (the stats filter) in a mesh of 1000 "
        "services, and its sidecar container also runs pilot-agent. Here each Envoy has one "
        "worker (`--concurrency 1`), the config of Bookinfo's four services, a JSON access "
        f"log and no stats filter, and the Python apps cap the rate ({rps:.0f} pages/s here), "
        "so the per-1000-rps CPU includes a fixed idle cost spread over fewer requests. Memory "
        "here is per process at this small config, not per 1000 rps: Envoy's memory grows "
        "with config size and open connections more than with the request rate.",
        "",
    ]
    return "\n".join(lines)
