"""`python -m bench.soak [--seconds 600]`: weight changes every second under steady load.

Every second the reviews VirtualService gets new weights over v1, v2 and v3 (always summing
to 100, every subset has pods), while two steady loads run: /productpage through the ingress
gateway, and /reviews/0 straight through productpage's sidecar, the very route being changed
(productpage hides a failed reviews call behind a 200, this load does not). No weight causes a
failed request, so every failure counts against the mesh. Every 10 s each mesh process's
memory (RSS, PSS, USS) and open file descriptors are sampled. Writes bench/SOAK.md; exits 1
when a request failed, a process restarted, memory grew or descriptors leaked.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lablib.backend import Backend
from lablib.load import LoadResult, load

from .machine import machine_info
from .memory import MIB, Memory, bookinfo_mesh, memory_of, mesh_pids, named_mesh, open_fds
from .memory import short_name as short
from .mesh_bench import BOOKINFO_NS, SAMPLES
from .stats import percentile

REPORT = Path(__file__).with_name("SOAK.md")
SAMPLE_EVERY_S = 10
WARM_UP_S = 10
# v1/v2/v3 weights, in turn: every change moves traffic between subsets.
WEIGHTS = [(100, 0, 0), (80, 20, 0), (50, 50, 0), (20, 80, 0), (0, 100, 0), (0, 50, 50),
           (0, 0, 100), (34, 33, 33), (10, 20, 70), (70, 10, 20)]
# Flat memory: private pages grow by no more than this much over the soak...
FLAT_MIB, FLAT_SHARE = 2.0, 0.05
# ...and no leaked descriptors: no more open at the end than at the start plus this slack
# (pooled upstream connections come and go with the load).
FD_SLACK = 4


def reviews_weights(v1: int, v2: int, v3: int) -> dict[str, Any]:
    """The reviews VirtualService splitting traffic v1/v2/v3 by these weights."""
    route = [{"destination": {"host": "reviews", "subset": f"v{i}"}, "weight": w}
             for i, w in enumerate((v1, v2, v3), start=1)]
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": BOOKINFO_NS},
            "spec": {"hosts": ["reviews"], "http": [{"route": route}]}}


@dataclass
class Track:
    """One process over the soak: (seconds, memory, open fds) samples and its pids."""

    samples: list[tuple[float, Memory, int]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def growth(self) -> tuple[float, float, int]:
        """(RSS growth MiB, USS growth MiB, fd growth) from the first sample to the last."""
        (_, first, fd0), (_, last, fd1) = self.samples[0], self.samples[-1]
        return (last.rss - first.rss) / MIB, (last.uss - first.uss) / MIB, fd1 - fd0

    def flat(self) -> bool:
        first = self.samples[0][1].uss / MIB
        return self.growth()[1] <= max(FLAT_MIB, FLAT_SHARE * first)


def sample(mesh: Backend, tracks: dict[str, Track], since: float) -> None:
    """Memory and open descriptors of every mesh process, now."""
    now = time.monotonic() - since
    for name, pid in mesh_pids(mesh).items():
        memory, fds = memory_of(pid), open_fds(pid)
        if memory is None or fds is None:
            continue
        track = tracks.setdefault(name, Track())
        track.samples.append((now, memory, fds))
        track.pids.add(pid)


@dataclass
class Soak:
    """Everything one soak measured."""

    seconds: float
    qps: float
    applies_ms: list[float] = field(default_factory=list)
    apply_errors: list[str] = field(default_factory=list)
    tracks: dict[str, Track] = field(default_factory=dict)
    loads: dict[str, LoadResult] = field(default_factory=dict)


def soak(seconds: float, qps: float) -> Soak:
    """Bring up Bookinfo in a mesh of its own, soak it, tear it down."""
    result = Soak(seconds, qps)
    with named_mesh("bench-soak") as started:
        mesh, url = bookinfo_mesh(started)
        mesh.apply(f"{SAMPLES}/bookinfo/networking/destination-rule-all.yaml",
                   namespace=BOOKINFO_NS)
        mesh.apply(reviews_weights(*WEIGHTS[0]))
        pod = mesh.pod_name({"app": "productpage"}, BOOKINFO_NS)
        proxy = mesh.proxy_url(pod, BOOKINFO_NS)
        total = WARM_UP_S + seconds
        targets = {"ingress → /productpage": (url, None),
                   "productpage sidecar → reviews": ("http://reviews:9080/reviews/0", proxy)}

        def run_load(name: str, target: str, via: str | None) -> None:
            result.loads[name] = load(target, connections=1, qps=qps, duration=total,
                                      proxy=via, timeout=10)

        threads = [threading.Thread(target=run_load, args=(name, *t), daemon=True)
                   for name, t in targets.items()]
        for thread in threads:
            thread.start()
        start = time.monotonic()
        change = 0
        while (due := start + change) < start + total:
            time.sleep(max(0.0, due - time.monotonic()))
            change += 1
            if change == WARM_UP_S or (change > WARM_UP_S and change % SAMPLE_EVERY_S == 0):
                sample(mesh, result.tracks, start + WARM_UP_S)
            began = time.perf_counter()
            try:
                mesh.apply(reviews_weights(*WEIGHTS[change % len(WEIGHTS)]))
                result.applies_ms.append((time.perf_counter() - began) * 1000)
            except Exception as exc:  # reported, and the soak goes on
                result.apply_errors.append(f"{type(exc).__name__}: {exc}"[:300])
        for thread in threads:
            thread.join()
        sample(mesh, result.tracks, start + WARM_UP_S)
    return result


def _codes(run: LoadResult) -> str:
    return ", ".join(f"{code or 'no response'}: {count}" for code, count in run.codes().items())


def report(result: Soak) -> tuple[str, bool]:
    """The Markdown report and whether every criterion was met."""
    machine = machine_info()
    failed = {name: int((run.frame["status"] != 200).sum()) for name, run in result.loads.items()}
    restarted = [name for name, track in result.tracks.items() if len(track.pids) > 1]
    grown = [name for name, track in result.tracks.items() if not track.flat()]
    leaking = [name for name, track in result.tracks.items() if track.growth()[2] > FD_SLACK]
    ok = not any(failed.values()) and not result.apply_errors and not restarted \
        and not grown and not leaking
    applies = result.applies_ms or [float("nan")]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    samples = len(next(iter(result.tracks.values())).samples)
    lines = [
        "# Soak: weight changes under steady load",
        "",
        f"Run {now} with `python -m bench.soak --seconds {result.seconds:g}`: "
        f"{'every criterion met' if ok else 'SOME CRITERIA NOT MET'}.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items()],
        "",
        "## What ran",
        "",
        f"A Bookinfo mesh with `destination-rule-all.yaml`. For {result.seconds:g} s (after "
        f"{WARM_UP_S} s of warm-up) the reviews VirtualService got new v1/v2/v3 weights every "
        f"second, cycling through {len(WEIGHTS)} splits that all sum to 100: "
        f"{len(result.applies_ms)} applies in all (warm-up included), each returning once "
        f"every Envoy ACKed it (p50 {percentile(applies, 50):.1f} ms, p99 "
        f"{percentile(applies, 99):.1f} ms, max {max(applies):.1f} ms), "
        f"{len(result.apply_errors)} refused. Two loads ran throughout, "
        f"{result.qps:g} requests/s each on one keep-alive connection (`lablib.load`).",
        "",
        "## Requests",
        "",
        "No split sends traffic anywhere without pods, so the config causes no failure: every "
        "non-200 counts against the mesh.",
        "",
        "| load | requests | failed | responses |",
        "|---|---|---|---|",
        *[f"| {name} | {len(run.frame)} | {failed[name]} | {_codes(run)} |"
          for name, run in result.loads.items()],
        "",
        *[f"- apply refused: {error}\n" for error in result.apply_errors[:10]],
        "## Memory and file descriptors",
        "",
        f"Sampled every {SAMPLE_EVERY_S} s from /proc ({samples} samples per process), the "
        "first after the warm-up. Flat = private memory (USS) grew "
        f"by at most {FLAT_MIB:g} MiB or {FLAT_SHARE:.0%}; no leak = at most {FD_SLACK} more "
        "open descriptors at the end than at the start.",
        "",
        "| process | RSS MiB, first → last | USS MiB, first → last | USS growth MiB "
        "| open fds, first → last (max) | restarts | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(result.tracks, key=lambda n: (n != "meshd", n)):
        track = result.tracks[name]
        (_, first, fd0), (_, last, fd1) = track.samples[0], track.samples[-1]
        fd_max = max(s[2] for s in track.samples)
        verdict = "flat" if track.flat() else "GREW"
        if track.growth()[2] > FD_SLACK:
            verdict += ", FDS GREW"
        lines.append(
            f"| {short(name)} | {first.rss / MIB:.1f} → {last.rss / MIB:.1f} "
            f"| {first.uss / MIB:.1f} → {last.uss / MIB:.1f} | {track.growth()[1]:+.2f} "
            f"| {fd0} → {fd1} ({fd_max}) | {len(track.pids) - 1} | {verdict} |")
    total_first = sum(t.samples[0][1].uss for t in result.tracks.values()) / MIB
    total_last = sum(t.samples[-1][1].uss for t in result.tracks.values()) / MIB
    lines += [
        "",
        f"All processes together: USS {total_first:.1f} → {total_last:.1f} MiB "
        f"({total_last - total_first:+.1f} MiB over {result.seconds / 60:.1f} min).",
        "",
        "## Verdict",
        "",
        f"- failed requests: {sum(failed.values())} "
        f"({'none' if not any(failed.values()) else 'SOME'} beyond those the config causes)",
        f"- processes restarted: {', '.join(map(short, restarted)) or 'none'}",
        f"- memory not flat: {', '.join(map(short, grown)) or 'none'}",
        f"- descriptors leaked: {', '.join(map(short, leaking)) or 'none'}",
        "",
    ]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    """Run the soak, write bench/SOAK.md (or --output) and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="how long to change weights under load (default 600)")
    parser.add_argument("--qps", type=float, default=20.0,
                        help="requests per second of each of the two loads (default 20)")
    parser.add_argument("--output", type=Path, default=REPORT, help="where to write the report")
    args = parser.parse_args(argv)
    if args.seconds < SAMPLE_EVERY_S or args.qps <= 0:
        parser.error(f"--seconds must be at least {SAMPLE_EVERY_S} and --qps positive")
    text, ok = report(soak(args.seconds, args.qps))
    args.output.write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
