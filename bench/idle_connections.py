"""What a burst of connections leaves behind: descriptors in productpage's sidecar, threads in
productpage, counted before the burst, right after it and for a while after.

`python -m bench.idle_connections [seconds]` prints a Markdown table. The burst is CONNECTIONS
clients at once through the ingress gateway, each sending one /productpage request and
closing; what stays afterwards is the proxies' pools of idle upstream connections (gateway ->
sidecar -> app, sidecar -> details/reviews), each holding a descriptor at both ends and a
thread in the app, until the clusters' idle timeout closes them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.request

from .memory import bookinfo_mesh, mesh_pids, named_mesh

CONNECTIONS = 200
SAMPLE_AT = (0, 5, 30, 55, 65, 90)  # seconds after the burst


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _burst(url: str) -> int:
    """CONNECTIONS concurrent one-request clients; returns how many got a 200."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    start = threading.Barrier(CONNECTIONS)
    ok: list[int] = []

    def one() -> None:
        start.wait()
        try:
            with direct.open(url, timeout=60) as answer:
                answer.read()
                ok.append(answer.status)
        except OSError:
            pass

    workers = [threading.Thread(target=one) for _ in range(CONNECTIONS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return ok.count(200)


def run(until: float = max(SAMPLE_AT)) -> str:
    with named_mesh("bench-idle") as started:
        mesh, url = bookinfo_mesh(started)
        pids = mesh_pids(mesh)
        sidecar = pids[next(n for n in pids if ".productpage-v1-" in n
                            and n.endswith("istio-proxy"))]
        app = pids[next(n for n in pids if ".productpage-v1-" in n
                        and n.endswith(".productpage"))]
        rows = [f"| before | {_open_fds(sidecar)} | {_threads(app)} |"]
        ok = _burst(url)
        burst_end = time.monotonic()
        for at in (s for s in SAMPLE_AT if s <= until):
            time.sleep(max(0.0, burst_end + at - time.monotonic()))
            rows.append(f"| {at} s after | {_open_fds(sidecar)} | {_threads(app)} |")
    return "\n".join([
        f"{CONNECTIONS} concurrent clients, one /productpage each ({ok} answered 200); "
        "productpage's sidecar and app:", "",
        "| when | sidecar open fds | app threads |", "|---|---|---|", *rows])


if __name__ == "__main__":
    print(run(float(sys.argv[1]) if len(sys.argv) > 1 else max(SAMPLE_AT)))
