"""Several meshes brought up at once on one machine share no port and answer only for themselves.

Four kernels (Python processes, each with its own LAB_MESH) start together; each installs
Istio and an injected httpbin behind its ingress gateway, whose VirtualService answers
`/whoami` with a status of its own (470 + the mesh's number). Envoy binds listeners with
SO_REUSEPORT, so two meshes on one port would not fail: they would split the traffic. So
besides disjoint ports, every mesh's gateway must answer every request as that mesh.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

MESHES = 4
REQUESTS = 40
KERNEL = textwrap.dedent("""\
    import json, sys
    import lablib
    number = int(sys.argv[1])
    routes = f'''
    apiVersion: networking.istio.io/v1alpha3
    kind: Gateway
    metadata: {{name: gw}}
    spec:
      selector: {{istio: ingressgateway}}
      servers:
      - port: {{number: 80, name: http, protocol: HTTP}}
        hosts: ["*"]
    ---
    apiVersion: networking.istio.io/v1alpha3
    kind: VirtualService
    metadata: {{name: httpbin}}
    spec:
      hosts: ["*"]
      gateways: [gw]
      http:
      - match: [{{uri: {{prefix: /whoami}}}}]
        fault: {{abort: {{httpStatus: {470 + number}, percentage: {{value: 100}}}}}}
        route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
      - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
    '''
    mesh = lablib.connect()
    try:
        mesh.install()
        mesh.create_namespace("app", {"istio-injection": "enabled"})
        mesh.apply("samples/httpbin/httpbin.yaml", namespace="app")
        mesh.apply(routes, namespace="app")
        print(json.dumps({"ingress": mesh.ingress_address()[1], "ports": mesh.ports(),
                          "pid": mesh.call("ping")["pid"]}), flush=True)
        sys.stdin.read()  # hold the mesh until the test closes our stdin
    finally:
        mesh.uninstall()
    """)


def tagged(root: Path) -> set[int]:
    """Live processes started for meshes under LAB_STATE_DIR=`root`."""
    marks = (f"LAB_STATE_DIR={root}".encode(), f"LAB_SUPERVISOR_DIR={root}/".encode())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(v == marks[0] or v.startswith(marks[1]) for v in environ):
            found.add(int(entry.name))
    return found


def read_all(kernels: list[subprocess.Popen[str]], logs: list[Path],
             timeout: float) -> list[dict]:
    """Each kernel's report line, in order; fails with the kernel's log if one dies."""
    reports: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(reports) < len(kernels):
        waiting = {k.stdout: i for i, k in enumerate(kernels) if i not in reports}
        left = deadline - time.monotonic()
        assert left > 0, f"{len(waiting)} of {len(kernels)} meshes not up in {timeout:.0f} s"
        for pipe in select.select(list(waiting), [], [], left)[0]:
            index = waiting[pipe]
            line = pipe.readline() if pipe is not None else ""
            assert line.startswith("{"), (
                f"mesh {index} failed to come up:\n{logs[index].read_text()[-2000:]}")
            reports[index] = json.loads(line)
    return [reports[i] for i in range(len(kernels))]


def test_meshes_started_together_share_no_port_and_answer_for_themselves(tmp_path, kit_root):
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"mm-test-{os.getpid()}"  # short socket paths
    kernels: list[subprocess.Popen[str]] = []
    logs = [tmp_path / f"kernel-{i}.log" for i in range(MESHES)]
    try:
        for i in range(MESHES):
            env = dict(os.environ, LAB_MESH=f"many-{i}", LAB_STATE_DIR=str(root),
                       LAB_PROGRESS="off")
            with open(logs[i], "w") as log:
                kernels.append(subprocess.Popen(
                    [sys.executable, "-c", KERNEL, str(i)], env=env, cwd=kit_root, text=True,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log))
        reports = read_all(kernels, logs, timeout=420)

        held = [set(r["ports"]) for r in reports]
        for i in range(MESHES):
            for j in range(i + 1, MESHES):
                assert not held[i] & held[j], f"meshes {i} and {j} share {held[i] & held[j]}"
        with httpx.Client(trust_env=False, timeout=10) as client:
            for i, report in enumerate(reports):
                base = f"http://127.0.0.1:{report['ingress']}"
                mine = {client.get(f"{base}/whoami").status_code for _ in range(REQUESTS)}
                assert mine == {470 + i}, f"mesh {i}'s gateway answered {mine}"
                served = {client.get(f"{base}/get").status_code for _ in range(REQUESTS // 4)}
                assert served == {200}
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
    assert [k.returncode for k in kernels] == [0] * MESHES
    deadline = time.monotonic() + 10
    while tagged(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged(root) == set()
    shutil.rmtree(root, ignore_errors=True)
