"""The local mesh with real Envoy: routing outcomes, and bad input that never breaks it.

Every bad-input case asserts two things: a clear error that names the resource and field,
and that traffic afterwards still follows the last good config.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

import lablib
from lablib import traffic

pytestmark = pytest.mark.envoy
NS = "bookinfo-test"
ALL_V1 = "samples/bookinfo/networking/virtual-service-all-v1.yaml"
JASON_V2 = "samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml"


def reviews_vs(routes: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1alpha3
        kind: VirtualService
        metadata:
          name: reviews
          namespace: {NS}
        spec:
          hosts: [reviews]
          http:
          - route:
        """) + textwrap.indent(textwrap.dedent(routes), " " * 4)


def assert_still_jason_v2(mesh):
    assert traffic.shares(traffic.send(mesh, n=6, user="jason")).to_dict() == {"v2": 1.0}
    assert traffic.shares(traffic.send(mesh, n=6)).to_dict() == {"v1": 1.0}


@pytest.fixture(scope="module")
def routed(bookinfo_mesh):
    bookinfo_mesh.apply(ALL_V1, namespace=NS)
    bookinfo_mesh.apply(JASON_V2, namespace=NS)
    return bookinfo_mesh


def test_productpage_answers_through_the_ingress_gateway(bookinfo_mesh):
    host, port = bookinfo_mesh.ingress_address()
    assert host == "127.0.0.1"
    frame = traffic.send(bookinfo_mesh, n=10)
    assert (frame["status"] == 200).all()


def test_every_bookinfo_pod_has_its_sidecar(bookinfo_mesh):
    pods = bookinfo_mesh.get("pods", namespace=NS)
    assert len(pods) == 6
    for pod in pods:
        names = [c["name"] for c in pod["spec"]["containers"]]
        assert "istio-proxy" in names
        assert pod["status"]["phase"] == "Running"


def test_routing_by_user(routed):
    assert_still_jason_v2(routed)


def test_exec_runs_real_curl_through_the_pods_sidecar(routed):
    pod = routed.pod_name({"app": "productpage"}, NS)
    result = routed.exec(pod, ["curl", "-s", "-D", "-", "http://reviews:9080/reviews/0"],
                         namespace=NS)
    assert result.returncode == 0
    assert "server: istio-envoy" in result.stdout.lower()  # answered through the sidecar
    assert '"podname": "reviews-v1-' in result.stdout  # and routed by the all-v1 rule


def test_proxy_config_shows_the_subset_clusters(routed):
    from lablib.proxyconfig import proxy_config

    pod = routed.pod_name({"app": "productpage"}, NS)
    clusters = proxy_config(routed, "clusters", pod, NS)
    subsets = set(clusters[clusters.service_fqdn == f"reviews.{NS}.svc.cluster.local"].subset)
    assert {"", "v1", "v2", "v3"} <= subsets


BAD_INPUTS = {
    "invalid YAML": ("kind: VirtualService\nmetadata: {name: reviews\n", "line"),
    "unknown kind": ("apiVersion: v1\nkind: Podd\nmetadata: {name: x}\n", "Podd"),
    "weight not a number": (reviews_vs("""\
        - destination: {host: reviews, subset: v1}
          weight: "abc"
        """), "spec.http[0].route[0].weight"),
    "weights sum to 90": (reviews_vs("""\
        - {destination: {host: reviews, subset: v1}, weight: 50}
        - {destination: {host: reviews, subset: v3}, weight: 40}
        """), "sum to 90"),
    "undefined subset": (reviews_vs("""\
        - destination: {host: reviews, subset: v9}
        """), "v9"),
    "missing namespace": ("""\
apiVersion: v1
kind: Service
metadata: {name: x, namespace: no-such-namespace}
spec: {ports: [{port: 80}], selector: {app: x}}
""", "no-such-namespace"),
    "image with no local equivalent": ("""\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: bookinfo-test}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "registry.example.com/shop/web:2.1", ports: [{containerPort: 80}]}
""", "registry.example.com/shop/web:2.1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_traffic_keeps_the_last_good_config(routed, case):
    text, named = BAD_INPUTS[case]
    with pytest.raises(lablib.ConfigError) as refused:
        routed.apply(text)
    assert named in str(refused.value)
    assert "fix" in str(refused.value) or "line" in str(refused.value)
    assert_still_jason_v2(routed)


def test_a_node_port_another_program_holds_is_refused_before_any_push(routed,
                                                                      node_port_squatter):
    taken = node_port_squatter
    service = routed.get("service", "istio-ingressgateway", "istio-system")[0]
    service["spec"]["ports"].append({"name": "http-extra", "port": 3000,
                                     "targetPort": 3000, "nodePort": taken})
    gateway = {
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
        "metadata": {"name": "extra", "namespace": NS},
        "spec": {"selector": {"istio": "ingressgateway"},
                 "servers": [{"port": {"number": 3000, "name": "http", "protocol": "HTTP"},
                              "hosts": ["*"]}]}}
    with pytest.raises(lablib.ConfigError) as refused:
        routed.apply([service, gateway])
    [finding] = refused.value.diagnostics
    assert finding.resource == "Service istio-system/istio-ingressgateway"
    assert finding.field.endswith("].nodePort") and f"nodePort {taken} is in use" in str(finding)
    ports = [p["name"] for p in
             routed.get("service", "istio-ingressgateway", "istio-system")[0]["spec"]["ports"]]
    assert "http-extra" not in ports
    assert not routed.get("gateway", namespace=NS, selector=None) or all(
        g["metadata"]["name"] != "extra" for g in routed.get("gateway", namespace=NS))
    assert_still_jason_v2(routed)


def test_cluster_ips_are_loopback_and_route_like_the_service_name(routed):
    """Cluster IPs come from 127.96.0.0/12, so a learner's `nc CLUSTER_IP PORT` never sends a
    packet off the machine; one outside that range is refused as the API server refuses it."""
    services = routed.get("service", namespace=NS)
    ips = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in services}
    assert ips and all(ipaddress.ip_address(ip) in ipaddress.ip_network("127.96.0.0/12")
                       for ip in ips.values()), ips
    sleep_like = routed.pod_name({"app": "productpage"}, NS)
    answer = routed.exec(sleep_like, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                      f"http://{ips['ratings']}:9080/ratings/0"],
                         namespace=NS, container="productpage", timeout=20)
    assert answer.stdout == "200", answer
    private = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "private-ip", "namespace": NS},
               "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "ratings"},
                        "ports": [{"name": "http", "port": 9080}]}}
    with pytest.raises(lablib.ConfigError) as refused:
        routed.apply(private)
    [finding] = refused.value.diagnostics
    assert (finding.code, finding.field) == ("LAB0109", "spec.clusterIP")
    assert "is not in the valid range. The range of valid IPs is 127.96.0.0/12" in str(finding)


def test_ports_listen_on_loopback_only_and_admin_and_xds_on_private_sockets(routed):
    """Every TCP socket a mesh process listens on (listeners, apps) is bound to loopback; xDS
    and every Envoy's admin API are Unix sockets in the 0700 state folder, no port."""
    pids = {row["pid"] for row in routed.processes() if row.get("pid")}
    meshd = routed.call("ping")["pid"]
    pids.add(meshd)
    metrics = routed.telemetry_endpoints()["metrics"]
    sockets = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    checked = 0
    for line in sockets.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            local = line.split()[3]
            # 127.0.0.0/8 is all loopback (the load balancer's address is 127.200.x.y).
            assert local.startswith(("127.", "[::ffff:127.", "[::1]:")), line
            if f"pid={meshd}," in line:  # xDS is a Unix socket: only the read-only metrics
                assert f"http://{local}/" in metrics, line
            checked += 1
    assert checked >= 8  # gateway, sidecar and app ports were all seen
    unix = subprocess.run(["ss", "-Hlxp"], capture_output=True, text=True, check=True).stdout
    state = routed.state.path
    assert f"{state}/xds.sock" in unix
    info = routed.pod_info(routed.pod_name({"app": "productpage"}, NS), NS)
    assert info["admin_socket"].startswith(f"{state}/admin/") and info["admin_socket"] in unix
    assert state.stat().st_mode & 0o777 == 0o700


def test_killing_the_kernel_ends_every_mesh_process(tmp_path):
    """kill -9 of the process that started the mesh: meshd and every child exit within 2 s."""
    script = textwrap.dedent("""\
        import os, sys, time
        import lablib
        mesh = lablib.connect("local")
        mesh.install()
        print(os.getpid(), flush=True)
        time.sleep(600)
        """)
    env = dict(os.environ, LAB_STATE_DIR=str(tmp_path))
    kernel = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert kernel.stdout is not None
        kernel.stdout.readline()
        children = _mesh_processes(str(tmp_path))
        assert len(children) >= 4  # meshd, kube-proxy, ingress and egress gateways
        os.kill(kernel.pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.5
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(children), f"still running: {_alive(children)}"
    finally:
        kernel.kill()


def _mesh_processes(state: str) -> list[int]:
    """Processes whose environment or command line names this mesh's state folder."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if state.encode() in f.read():
                    pids.append(int(entry))
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if state.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive


def test_workload_without_sidecar_reaches_services_by_name(routed):
    """A pod in a namespace without injection: plain connections by name, as kube-proxy gives."""
    routed.create_namespace("plain")
    try:
        routed.apply("samples/sleep/sleep.yaml", namespace="plain")
        pod = routed.pod_name({"app": "sleep"}, "plain")
        manifest = routed.get("pods", pod, "plain")[0]
        assert "istio-proxy" not in [c["name"] for c in manifest["spec"]["containers"]]
        result = routed.exec(pod, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://productpage.{NS}:9080/productpage"], namespace="plain")
        assert result.stdout == "200"
    finally:
        routed.delete_namespace("plain")


def test_meshes_side_by_side_then_nothing_left_but_logs(tmp_path, monkeypatch):
    """Two students' meshes on one machine: separate ports, and teardown leaves only logs."""
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path))
    meshes = {}
    try:
        for name in ("alice", "bob"):
            monkeypatch.setenv("LAB_MESH", name)
            meshes[name] = lablib.connect("local")
            meshes[name].install()
        status_ports = {name: mesh.ingress_address("status-port")[1]
                        for name, mesh in meshes.items()}
        assert status_ports["alice"] != status_ports["bob"]
        for port in status_ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready") as answer:
                assert answer.status == 200
        pids = [row["pid"] for mesh in meshes.values() for row in mesh.processes()]
    finally:
        for mesh in meshes.values():
            mesh.uninstall()
    deadline = time.monotonic() + 3
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pids)
    for name in meshes:
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["logs"]


def test_reapplying_a_manifest_is_unchanged_and_keeps_its_creation_time(bookinfo_mesh):
    created = bookinfo_mesh.get("svc", "details", NS)[0]["metadata"]["creationTimestamp"]
    time.sleep(1.1)  # a new stamp would differ at one-second resolution
    lines = bookinfo_mesh.apply("samples/bookinfo/platform/kube/bookinfo.yaml", namespace=NS)
    assert lines and all(line.endswith(" unchanged") for line in lines), lines
    assert bookinfo_mesh.get("svc", "details", NS)[0]["metadata"]["creationTimestamp"] == created


def test_a_kube_injected_manifest_runs_with_the_meshs_own_sidecar(bookinfo_mesh):
    """`kubectl apply -f <(istioctl kube-inject -f sleep.yaml)` in a namespace without the
    injection label: the pod gets its sidecar from the annotation, not from the label."""
    from lablib.config.loader import load

    bookinfo_mesh.create_namespace("injected-by-hand")
    try:
        docs = [r.body for r in load("samples/sleep/sleep.yaml")]
        for body in docs:
            if body["kind"] == "Deployment":
                template = body["spec"]["template"]
                template["metadata"].setdefault("annotations", {})[
                    "sidecar.istio.io/status"] = '{"containers":["istio-proxy"]}'
                template["spec"]["containers"].append(
                    {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.20.3"})
        bookinfo_mesh.apply(docs, namespace="injected-by-hand")
        pod = bookinfo_mesh.pod_name({"app": "sleep"}, "injected-by-hand")
        result = bookinfo_mesh.exec(pod, ["curl", "-s", "-D", "-", "-o", "/dev/null",
                                          f"http://productpage.{NS}:9080/productpage"],
                                    namespace="injected-by-hand")
        assert "200" in result.stdout.splitlines()[0]
        assert "server: istio-envoy" in result.stdout.lower()
    finally:
        bookinfo_mesh.delete_namespace("injected-by-hand")


def test_the_default_namespace_has_a_creation_time(bookinfo_mesh):
    assert bookinfo_mesh.get("namespace", "default")[0]["metadata"]["creationTimestamp"]


def test_a_pod_label_asks_for_a_sidecar_in_a_namespace_without_injection(bookinfo_mesh):
    from lablib.config.loader import load

    bookinfo_mesh.create_namespace("opt-in")
    try:
        docs = [r.body for r in load("samples/sleep/sleep.yaml")]
        for body in docs:
            if body["kind"] == "Deployment":
                body["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] = "true"
        bookinfo_mesh.apply(docs, namespace="opt-in")
        pod = bookinfo_mesh.get("pods", namespace="opt-in")[0]
        assert "istio-proxy" in [c["name"] for c in pod["spec"]["containers"]]
    finally:
        bookinfo_mesh.delete_namespace("opt-in")
