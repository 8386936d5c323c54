"""Big and explosive input: how long the loader takes to refuse the corpus's "billion laughs"
(tests/bad_inputs/yaml-billion-laughs.yaml), then meshd's memory around big objects: a 50 MB
ConfigMap (refused before it reaches meshd), then COUNT ConfigMaps of just under Kubernetes'
1 MiB limit applied and deleted.

`python -m bench.big_objects` prints the timing and a Markdown table of meshd's RSS and PSS.
"""

from __future__ import annotations

import time
from pathlib import Path

import lablib
from lablib.config.loader import load

from .memory import MIB, memory_of, named_mesh
from .stats import median

COUNT = 40
LAUGHS = Path(__file__).parents[1] / "tests" / "bad_inputs" / "yaml-billion-laughs.yaml"


def refusal_ms(text: str, runs: int = 20) -> float:
    """Median milliseconds for load() to refuse `text`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            load(text)
        except lablib.ConfigError:
            pass
        times.append((time.perf_counter() - started) * 1000)
    return median(times)
NAMESPACE = "big-objects"


def _configmap(name: str, size: int) -> dict:
    chunk = 64 * 1024
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {f"part-{i}": "x" * chunk for i in range(size // chunk)}}


def run() -> str:
    laughs = LAUGHS.read_text()
    rows = []
    with named_mesh("bench-big") as started:
        mesh = lablib.connect()
        started.append(mesh)
        mesh.create_namespace(NAMESPACE)
        pid = int(mesh.call("ping")["pid"])  # type: ignore[attr-defined]

        def sample(when: str) -> None:
            memory = memory_of(pid)
            assert memory is not None
            rows.append(f"| {when} | {memory.rss / MIB:.0f} | {memory.pss / MIB:.0f} |")

        sample("started")
        try:
            mesh.apply(_configmap("huge", 50 * MIB))
            refused = "ACCEPTED"
        except lablib.ConfigError as exc:
            refused = str(exc).splitlines()[1][:120]
        sample("after a 50 MB ConfigMap was refused")
        maps = [_configmap(f"big-{i}", MIB - 64 * 1024) for i in range(COUNT)]
        mesh.apply(maps)
        sample(f"{COUNT} ConfigMaps of 0.94 MiB applied")
        mesh.delete(maps)
        sample("all deleted")
    return "\n".join([f"billion laughs ({len(laughs)} bytes): refused in "
                      f"{refusal_ms(laughs):.2f} ms (median of 20)",
                      f"50 MB ConfigMap: {refused}", "", "| meshd | RSS MiB | PSS MiB |",
                      "|---|---|---|", *rows])


if __name__ == "__main__":
    print(run())
