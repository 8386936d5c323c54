"""meshd's memory around big objects: a 50 MB ConfigMap (refused before it reaches meshd),
then COUNT ConfigMaps of just under Kubernetes' 1 MiB limit applied and deleted.

`python -m bench.big_objects` prints meshd's RSS and PSS at each step as a Markdown table.
"""

from __future__ import annotations

import lablib

from .memory import MIB, memory_of, named_mesh

COUNT = 40
NAMESPACE = "big-objects"


def _configmap(name: str, size: int) -> dict:
    chunk = 64 * 1024
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {f"part-{i}": "x" * chunk for i in range(size // chunk)}}


def run() -> str:
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
    return "\n".join([f"50 MB ConfigMap: {refused}", "", "| meshd | RSS MiB | PSS MiB |",
                      "|---|---|---|", *rows])


if __name__ == "__main__":
    print(run())
