"""TCP traffic shifting: `lablib.tcp` against a bare echo server, then through the ingress
gateway's port 31400 on real Envoy (Istio's TCP traffic shifting task)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import lablib
from lablib import tcp, traffic
from lablib.apps.tcp_echo import EchoServer
from lablib.config.loader import load
from lablib.proxyconfig import proxy_config
from lablib.telemetry import LocalMetrics, wait_for_total

NS = "istio-io-tcp-traffic-shifting"
ALL_V1 = "samples/tcp-echo/tcp-echo-all-v1.yaml"
TWENTY_V2 = "samples/tcp-echo/tcp-echo-20-v2.yaml"
needs_nc = pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")


# --- lablib.tcp without a mesh --------------------------------------------------------------

@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer(0, "one")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_tcp_reads_one_answer_per_connection(echo):
    frame = tcp.send_tcp("127.0.0.1", echo.server_address[1], n=5, message="ping")
    assert list(frame.columns) == ["request", "start", "answer", "version", "latency_ms",
                                   "error"]
    assert frame["answer"].tolist() == ["one ping"] * 5
    assert set(frame["version"]) == {"one"} and set(frame["error"]) == {""}
    assert frame["start"].min() == 0 and (frame["latency_ms"] > 0).all()


def test_send_tcp_concurrently_keeps_every_request(echo):
    frame = tcp.send_tcp("127.0.0.1", echo.server_address[1], n=20, concurrency=4)
    assert sorted(frame["request"]) == list(range(20))
    assert set(frame["version"]) == {"one"}


def test_send_tcp_reports_a_refused_connection():
    frame = tcp.send_tcp("127.0.0.1", free_port(), n=2, timeout=1)
    assert frame["error"].tolist() == ["ConnectionRefusedError"] * 2
    assert set(frame["version"]) == {"error"}


def test_send_tcp_reports_a_connection_closed_without_an_answer():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.recv(64)  # closing with the request unread would reset, not close
            conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        frame = tcp.send_tcp("127.0.0.1", listener.getsockname()[1], n=1, timeout=2)
        thread.join()
    assert frame["error"].tolist() == ["closed"]
    assert frame["answer"].tolist() == [""]


def test_check_tcp_shares_passes_within_the_bound_and_fails_outside(echo):
    frame = tcp.send_tcp("127.0.0.1", echo.server_address[1], n=40)
    assert tcp.check_tcp_shares(frame, {"one": 1.0})["ok"].all()
    with pytest.raises(AssertionError, match="binomial bound"):
        tcp.check_tcp_shares(frame, {"one": 0.5, "two": 0.5})


def test_tcp_echo_route_is_the_samples_route_with_other_weights():
    sample = next(r.body for r in load(TWENTY_V2) if r.kind == "VirtualService")
    assert tcp.tcp_echo_route({"v1": 80, "v2": 20}) == sample
    only_v2 = tcp.tcp_echo_route({"v1": 0, "v2": 100})["spec"]["tcp"][0]["route"]
    assert [d["destination"]["subset"] for d in only_v2] == ["v2"]


@needs_nc
def test_nc_command_hangs_up_after_its_input_like_the_samples_nc(echo):
    class Local:
        name = "local"

    argv = tcp.nc_command(Local(), "127.0.0.1", echo.server_address[1])  # type: ignore[arg-type]
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("(date; sleep 1) | nc ")
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0 and result.stdout.startswith("one ")
    assert time.monotonic() - started < 5


# --- through the ingress gateway on real Envoy ----------------------------------------------

@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("tcp-state")))
        patch.setenv("LAB_MESH", f"test-tcp-{os.getpid()}")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply(["samples/sleep/sleep.yaml", "samples/tcp-echo/tcp-echo-services.yaml"],
                       namespace=NS)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture(scope="module")
def gateway_tcp(mesh) -> tuple[str, int]:
    mesh.apply(ALL_V1, namespace=NS)
    return mesh.ingress_address("tcp")


@pytest.mark.envoy
def test_all_connections_reach_v1(mesh, gateway_tcp):
    mesh.apply(ALL_V1, namespace=NS)
    frame = tcp.send_tcp(*gateway_tcp, n=30)
    assert set(frame["error"]) == {""}, frame[frame["error"] != ""]
    assert frame["answer"].str.fullmatch("one hello").all()
    tcp.check_tcp_shares(frame, {"one": 1.0})


@pytest.mark.envoy
def test_twenty_percent_of_connections_reach_v2(mesh, gateway_tcp):
    mesh.apply(TWENTY_V2, namespace=NS)
    frame = tcp.send_tcp(*gateway_tcp, n=300, concurrency=4)
    table = tcp.check_tcp_shares(frame, {"one": 0.8, "two": 0.2})
    assert set(table["version"]) == {"one", "two"}


@pytest.mark.envoy
def test_the_gateway_listener_is_a_tcp_proxy_over_weighted_subsets(mesh, gateway_tcp):
    mesh.apply(TWENTY_V2, namespace=NS)
    ingress = mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
    listeners = proxy_config(mesh, "listeners", ingress, "istio-system")
    row = listeners[listeners["name"] == "0.0.0.0_31400"].iloc[0]
    assert row["filter"] == "tcp_proxy" and row["port"] == gateway_tcp[1]
    clusters = tcp.tcp_proxy_clusters(mesh, ingress, "istio-system", "0.0.0.0_31400")
    assert clusters.to_dict("records") == [
        {"cluster": f"outbound|9000|v1|tcp-echo.{NS}.svc.cluster.local", "weight": 80},
        {"cluster": f"outbound|9000|v2|tcp-echo.{NS}.svc.cluster.local", "weight": 20}]


@pytest.mark.envoy
@needs_nc
def test_nc_inside_the_sleep_pod_gets_answers_from_v1(mesh, gateway_tcp):
    mesh.apply(ALL_V1, namespace=NS)
    sleep = mesh.pod_name({"app": "sleep"}, NS)
    for _ in range(2):
        result = mesh.exec(sleep, tcp.nc_command(mesh, *gateway_tcp), namespace=NS,
                           container="sleep", timeout=10)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("one "), result.stdout


@pytest.mark.envoy
def test_a_route_of_zero_weight_sends_nothing_there(mesh, gateway_tcp):
    mesh.apply(tcp.tcp_echo_route({"v1": 0, "v2": 100}), namespace=NS)
    frame = tcp.send_tcp(*gateway_tcp, n=20)
    tcp.check_tcp_shares(frame, {"two": 1.0})


TCP_ON_HTTP_PORT = {
    "match on the gateway's HTTP port": """\
        apiVersion: networking.istio.io/v1alpha3
        kind: Gateway
        metadata: {name: web}
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: 80, name: http, protocol: HTTP}
            hosts: ["*"]
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: VirtualService
        metadata: {name: tcp-on-http}
        spec:
          hosts: ["*"]
          gateways: [web]
          tcp:
          - match: [{port: 80}]
            route:
            - destination: {host: tcp-echo, port: {number: 9000}}
        """,
    "route to an HTTP Service port": """\
        apiVersion: networking.istio.io/v1alpha3
        kind: VirtualService
        metadata: {name: tcp-echo}
        spec:
          hosts: ["*"]
          gateways: [tcp-echo-gateway]
          tcp:
          - match: [{port: 31400}]
            route:
            - destination: {host: sleep, port: {number: 80}}
        """,
}


@pytest.mark.envoy
@pytest.mark.parametrize("case", TCP_ON_HTTP_PORT)
def test_a_tcp_route_on_an_http_port_is_refused_and_the_split_stays(mesh, gateway_tcp, case):
    mesh.apply(TWENTY_V2, namespace=NS)
    with pytest.raises(lablib.ConfigError) as refused:
        mesh.apply(textwrap.dedent(TCP_ON_HTTP_PORT[case]), namespace=NS)
    assert "LAB0212" in str(refused.value)
    names = {r["metadata"]["name"] for kind in ("gateway", "virtualservice")
             for r in mesh.get(kind, namespace=NS)}
    assert names == {"tcp-echo-gateway", "tcp-echo"}  # nothing of the refused apply stayed
    frame = tcp.send_tcp(*gateway_tcp, n=200, concurrency=4)
    tcp.check_tcp_shares(frame, {"one": 0.8, "two": 0.2})
    assert traffic.shares(frame).index.tolist() == ["one", "two"]


@pytest.mark.envoy
def test_the_weights_slider_starts_at_the_applied_split_and_applies_new_ones(mesh, gateway_tcp):
    mesh.apply(TWENTY_V2, namespace=NS)
    panel = tcp.weights_slider(mesh, NS, burst=60)
    assert panel.weights() == {"v1": 80, "v2": 20}
    frame = panel.set_weights({"v1": 0, "v2": 100})
    assert set(frame["version"]) == {"two"} and set(frame["subset"]) == {"v2"}
    route = mesh.get("virtualservice", "tcp-echo", NS)[0]["spec"]["tcp"][0]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in route] == [("v2", 100)]
    frame = panel.set_weights({"v1": 50, "v2": 50})
    traffic.check_shares(frame, panel.expected_shares(), column="subset")


@pytest.mark.envoy
def test_plain_http_to_a_tcp_port_reaches_the_service_as_on_a_cluster(mesh):
    """Istio passes the bytes of a `tcp-` port through: curl's HTTP from a sidecar-injected
    pod gets the server's answer (the sidecar's forward proxy once answered 404 NR)."""
    with open("samples/httpbin/httpbin.yaml") as f:
        manifest = f.read().replace("- name: http\n", "- name: tcp-web\n", 1)
    assert "name: tcp-web" in manifest
    mesh.apply(manifest, namespace=NS)
    mesh.wait_ready(NS)
    sleep = mesh.pod_name({"app": "sleep"}, NS)
    result = mesh.exec(sleep, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "10", "http://httpbin:8000/status/418"],
                       namespace=NS, container="sleep", timeout=20)
    assert result.stdout == "418", (result.stdout, result.stderr)
    # Istio's TCP proxy reports the connection as TCP at both ends.
    metrics = LocalMetrics(mesh.telemetry_endpoints()["metrics"])
    try:
        for reporter in ("source", "destination"):
            promql = (f'istio_tcp_connections_opened_total{{reporter="{reporter}",'
                      f'destination_service_name="httpbin"}}')
            assert wait_for_total(metrics, promql, 1, timeout=15) >= 1, reporter
        assert wait_for_total(metrics, 'istio_requests_total{destination_service_name='
                              '"httpbin"}', 1, timeout=0) == 0
    finally:
        metrics.close()


@pytest.mark.envoy
def test_kubectl_logs_by_selector_prints_the_gateways_access_log(mesh, gateway_tcp, capsys):
    """`kubectl logs -l istio=ingressgateway -c istio-proxy -n istio-system`, as Istio's
    tasks read a gateway's access log (demo profile: accessLogFile /dev/stdout)."""
    from lablib.shims.kubectl import kubectl_main

    mesh.apply(ALL_V1, namespace=NS)
    tcp.send_tcp(*gateway_tcp, n=3)
    selector = ["logs", "-l", "istio=ingressgateway", "-c", "istio-proxy", "-n", "istio-system"]
    deadline = time.monotonic() + 10  # Envoy flushes its access log every 100 ms here
    lines: list[str] = []
    while len(lines) < 3 and time.monotonic() < deadline:
        assert kubectl_main(selector) == 0
        lines = capsys.readouterr().out.splitlines()
    assert 3 <= len(lines) <= 10  # a selector shows each pod's last 10 lines, as kubectl's
    assert any(f"outbound|9000|v1|tcp-echo.{NS}.svc.cluster.local" in line for line in lines)
    assert kubectl_main([*selector, "--prefix", "--tail=1"]) == 0
    pod = mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
    assert capsys.readouterr().out.startswith(f"[pod/{pod}/istio-proxy] ")
    assert kubectl_main(["logs", "-l", "app=nothing", "-n", NS]) == 0
    assert capsys.readouterr().err == f"No resources found in {NS} namespace.\n"


@pytest.mark.envoy
def test_env_value_from_reaches_the_app_as_the_kubelet_sets_it(mesh):
    """The pod's name from the downward API and a ConfigMap key, expanded in the args as
    Kubernetes expands them (they were empty strings before)."""
    manifest = textwrap.dedent(f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: echo-words, namespace: {NS}}}
        data: {{greeting: hi}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: tcp-echo-env, namespace: {NS}}}
        spec:
          selector: {{matchLabels: {{app: tcp-echo-env}}}}
          template:
            metadata: {{labels: {{app: tcp-echo-env}}}}
            spec:
              containers:
              - name: tcp-echo
                image: docker.io/istio/tcp-echo-server:1.2
                args: ["9000", "$(GREETING)-$(POD_NAME)"]
                ports: [{{containerPort: 9000}}]
                env:
                - name: POD_NAME
                  valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
                - name: GREETING
                  valueFrom: {{configMapKeyRef: {{name: echo-words, key: greeting}}}}
        """)
    try:
        mesh.apply(manifest, namespace=NS)
        mesh.wait_ready(NS)
        pod = mesh.pod_name({"app": "tcp-echo-env"}, NS)
        port = mesh.pod_info(pod, NS)["app_ports"]["9000"]  # the app itself
        frame = tcp.send_tcp("127.0.0.1", int(port), n=1)
        assert frame["answer"].iloc[0] == f"hi-{pod} hello", frame.to_dict("records")
        # `kubectl exec` gives a command the container's variables, as on a cluster.
        shown = mesh.exec(pod, ["printenv", "POD_NAME", "GREETING"], namespace=NS,
                          container="tcp-echo")
        assert shown.stdout.split() == [pod, "hi"], shown
    finally:
        mesh.delete(manifest, namespace=NS)
