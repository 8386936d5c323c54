"""`python -m bench`: measure the local mesh next to bare baselines; write bench/REPORT.md."""

from __future__ import annotations

import datetime
import importlib
import os
import sys
import tempfile
from pathlib import Path

from lablib.local.ports import allocate_port

from . import envoy_baseline as bare
from .machine import machine_info
from .mesh_bench import (
    BringUp,
    apply_ms,
    authz_apply_ms,
    bring_up,
    deploy_httpbin,
    isolated_mesh,
)
from .stats import median, percentile, sequential_latencies

REPORT = Path(__file__).with_name("REPORT.md")
BRING_UP_RUNS = 3
BARE_STARTS = 5
CHANGES = 50
POLICIES = 50
REQUESTS = 2000
ROUNDS = 4  # the three paths take turns, REQUESTS / ROUNDS at a time, so drift hits all alike


def _fmt(ms: list[float]) -> str:
    return f"{percentile(ms, 50):.2f} / {percentile(ms, 99):.2f}"


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ratio(over: float, base: float, digits: int) -> str:
    """`over / base` as "N.NN×", or n/a when the baseline difference is not positive."""
    return f"{over / base:.{digits}f}×" if base > 0 else "n/a (baseline difference ≤ 0: noise)"


def _load() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    return f"{os.getloadavg()[0]:.2f}"


def _interleaved(urls: dict[str, str]) -> dict[str, list[float]]:
    """REQUESTS sequential keep-alive latencies per URL, taken in alternating rounds."""
    result: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(ROUNDS):
        for name, url in urls.items():
            result[name] += sequential_latencies(url, REQUESTS // ROUNDS)
    return result


def run(workdir: Path) -> str:
    """Every measurement, in one run; returns the report's Markdown."""
    machine = machine_info()
    load_start = _load()
    envoy_starts = [bare.envoy_start_seconds(workdir, f"envoy-{i}") for i in range(BARE_STARTS)]
    app_starts = [bare.app_start_seconds(workdir, f"app-{i}") for i in range(BARE_STARTS)]

    bring_ups: list[BringUp] = []
    for _ in range(BRING_UP_RUNS - 1):
        with isolated_mesh() as started:
            bring_ups.append(bring_up(started))
    # The last mesh stays up for the apply and per-hop measurements.
    with isolated_mesh() as started:
        bring_ups.append(bring_up(started))
        mesh = started[0]
        applies = apply_ms(mesh, CHANGES)
        authz_applies = authz_apply_ms(mesh, POLICIES, CHANGES)
        file_reloads = bare.file_reload_ms(workdir, CHANGES)
        mesh_url = deploy_httpbin(mesh)
        with bare.upstream(workdir) as upstream_port:
            b_port, a_port = allocate_port(), allocate_port()
            config_b = bare.proxy_config(str(workdir / "chain-b.sock"), b_port, upstream_port)
            config_a = bare.proxy_config(str(workdir / "chain-a.sock"), a_port, b_port)
            with bare.envoy(config_b, workdir, "chain-b"), bare.envoy(config_a, workdir, "chain-a"):
                latencies = _interleaved({
                    "a": mesh_url,
                    "b": f"http://127.0.0.1:{a_port}/status/200",
                    "c": f"http://127.0.0.1:{upstream_port}/status/200",
                })

    machine["load average (1 min), start → end"] = f"{load_start} → {_load()}"
    # --- bring-up ------------------------------------------------------------------------------
    bring_up_s = median([b.seconds for b in bring_ups])
    envoys, apps = bring_ups[-1].envoys, bring_ups[-1].python_processes
    envoy_s, app_s = median(envoy_starts), median(app_starts)
    bare_sum = envoys * envoy_s + apps * app_s
    # --- apply -----------------------------------------------------------------------------------
    apply_p50, apply_p99 = percentile(applies, 50), percentile(applies, 99)
    file_p50, file_p99 = percentile(file_reloads, 50), percentile(file_reloads, 99)
    # --- per hop ---------------------------------------------------------------------------------
    p = {name: (percentile(ms, 50), percentile(ms, 99)) for name, ms in latencies.items()}
    b_minus_c = p["b"][0] - p["c"][0]
    hop50 = (p["a"][0] - p["c"][0]) / b_minus_c if b_minus_c > 0 else float("nan")

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Local mesh benchmark",
        "",
        f"Run {now} with `python -m bench`; every figure and its baseline come from this one run.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items()],
        "",
        "## 1. Bring-up",
        "",
        f"From `lablib.connect()` to the first 200 from `/productpage` through the ingress "
        f"gateway (install + Bookinfo + gateway), {BRING_UP_RUNS} runs, each with a fresh "
        "`LAB_STATE_DIR`. Baseline: the same processes started bare, one after another "
        f"(median of {BARE_STARTS} starts each): an Envoy with a minimal static config to "
        "`/ready` = LIVE, and `python -m lablib.apps.bookinfo.details` to its first accepted "
        "connection.",
        "",
        "| | seconds |",
        "|---|---|",
        f"| mesh bring-up, median (runs: {', '.join(f'{b.seconds:.2f}' for b in bring_ups)}) "
        f"| {bring_up_s:.2f} |",
        f"| bare Envoy start × {envoys} Envoys ({envoy_s * 1000:.0f} ms each) "
        f"| {envoys * envoy_s:.2f} |",
        f"| bare Python app start × {apps} Python processes, kube-proxy included "
        f"({app_s * 1000:.0f} ms each) | {apps * app_s:.2f} |",
        f"| sum of bare starts | {bare_sum:.2f} |",
        f"| **ratio mesh / bare sum** | **{bring_up_s / bare_sum:.2f}×** |",
        "",
        f"Aim: bring-up under 3 s on 2 cores: {_mark(bring_up_s < 3.0)} "
        f"({bring_up_s:.2f} s on {machine['nproc']} cores). The bare sum is serial; the mesh "
        "starts processes in parallel, so a ratio below 1 is possible.",
        "",
        "## 2. Apply to acknowledged",
        "",
        f"{CHANGES} weight changes on the reviews VirtualService (80/20 and 20/80 alternately, "
        "after `destination-rule-all.yaml`), timed around `mesh.apply()`, which returns when "
        "every affected Envoy ACKed. Baseline: one Envoy with RDS from a watched file; a new "
        "route config is renamed over the file, timed until a request sees the new "
        "`direct_response` body.",
        "",
        "| | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| mesh apply → ACK | {apply_p50:.2f} | {apply_p99:.2f} |",
        f"| mesh apply → ACK, one AuthorizationPolicy of {POLICIES} | "
        f"{percentile(authz_applies, 50):.2f} | {percentile(authz_applies, 99):.2f} |",
        f"| single Envoy, file RDS rename → visible | {file_p50:.2f} | {file_p99:.2f} |",
        f"| **ratio mesh / file** | **{_ratio(apply_p50, file_p50, 1)}** "
        f"| **{_ratio(apply_p99, file_p99, 1)}** |",
        "",
        f"Aim: p99 apply under 100 ms: {_mark(apply_p99 < 100)} ({apply_p99:.1f} ms).",
        "",
        "## 3. Per-hop latency",
        "",
        f"{REQUESTS} sequential keep-alive GET `/status/200` (httpx.Client) per path, taken in "
        f"{ROUNDS} alternating rounds. Upstream: httpbin under waitress.",
        "",
        "| path | p50 / p99 ms |",
        "|---|---|",
        f"| a) mesh: ingress gateway → httpbin sidecar → httpbin | {_fmt(latencies['a'])} |",
        f"| b) minimal static chain: Envoy A → Envoy B → upstream | {_fmt(latencies['b'])} |",
        f"| c) direct to upstream | {_fmt(latencies['c'])} |",
        f"| **per-hop overhead of the mesh vs minimal config, (a−c)/(b−c)** "
        f"| **p50 {_ratio(p['a'][0] - p['c'][0], p['b'][0] - p['c'][0], 2)} / "
        f"p99 {_ratio(p['a'][1] - p['c'][1], p['b'][1] - p['c'][1], 2)}** |",
        "",
        f"Aim: within 1.2× (p50): {_mark(0 < hop50 <= 1.2)}.",
        "",
    ]
    return "\n".join(lines)


# Further sections: memory per sidecar against a bare Envoy, 1/5/10 meshes side by side,
# the load generator against hey, the whole lab suite against one bring-up, and the egress
# path per hop next to the in-mesh one.
EXTRA_SECTIONS = ("memory", "multi_mesh", "load_vs_hey", "lab_suite", "egress")


def main() -> int:
    """Run the benchmarks, write bench/REPORT.md and print it."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sections = [run(Path(tmp))]
        for name in EXTRA_SECTIONS:  # each measured in this same run, beside its baseline
            module = importlib.import_module(f"bench.{name}")
            folder = Path(tmp) / name
            folder.mkdir()
            try:
                sections.append(module.run(folder))
            except Exception as exc:  # one failed section must not lose the others' figures
                sections.append(f"## {name}\n\nNot measured in this run: "
                                f"{type(exc).__name__}: {exc}\n")
        report = "\n".join(sections)
    REPORT.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
