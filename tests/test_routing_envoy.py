"""Real-Envoy smoke tests for the routing features of tests/test_translation_routing.py:
mirroring (copies reach v2, answers come from v1), source-label routing, CORS preflights
answered by the sidecar, consistent hashing, and a gateway's httpsRedirect."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

import lablib

pytestmark = pytest.mark.envoy
NS = "routing"
URL = "http://httpbin:8000"

HTTPBIN_VERSIONS = """\
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec:
  ports: [{name: http, port: 8000, targetPort: 80}]
  selector: {app: httpbin}
""" + "".join(f"""\
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: httpbin-{version}}}
spec:
  selector: {{matchLabels: {{app: httpbin, version: {version}}}}}
  template:
    metadata: {{labels: {{app: httpbin, version: {version}}}}}
    spec:
      containers:
      - image: docker.io/kennethreitz/httpbin
        name: httpbin
        command: [gunicorn, --access-logfile, "-", -b, "0.0.0.0:80", "httpbin:app"]
        ports: [{{containerPort: 80}}]
""" for version in ("v1", "v2"))
CLIENTS = "".join(f"""\
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: {name}, image: curlimages/curl, command: [/bin/sleep, infinity]}}]
""" for name in ("sleep", "other"))
SUBSETS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("routing-state")))
        patch.setenv("LAB_MESH", "routing")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply(HTTPBIN_VERSIONS + CLIENTS, namespace=NS)
            mesh.wait_ready(NS)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture(autouse=True)
def no_rules(mesh):
    yield
    mesh.delete([{"apiVersion": "networking.istio.io/v1", "kind": kind,
                  "metadata": {"name": "httpbin", "namespace": NS}}
                 for kind in ("VirtualService", "DestinationRule", "Gateway")])


def client(mesh, app: str) -> httpx.Client:
    proxy = mesh.proxy_url(mesh.pod_name({"app": app}, NS), NS)
    return httpx.Client(proxy=proxy, timeout=10, trust_env=False)


def headers_lines(mesh, version: str) -> int:
    """How many `GET /headers` lines httpbin-VERSION has logged."""
    log = mesh.logs(mesh.pod_name({"app": "httpbin", "version": version}, NS), NS)
    return len(re.findall(r'"GET /headers HTTP/1\.1" 200', log))


def vs(http: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  http:
{http}"""


SERVED_BY = """\
  - route:
    - destination: {host: httpbin, subset: v1}
      headers: {response: {set: {x-served-by: v1}}}
"""


def test_mirrored_copies_reach_v2_and_only_v1_answers(mesh):
    mesh.apply(SUBSETS + "---\n" + vs(SERVED_BY + """\
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
"""), NS)
    before = {v: headers_lines(mesh, v) for v in ("v1", "v2")}
    with client(mesh, "sleep") as http:
        answers = [http.get(f"{URL}/headers") for _ in range(5)]
    assert all(a.status_code == 200 and a.headers["x-served-by"] == "v1" for a in answers)
    deadline = time.monotonic() + 5
    while headers_lines(mesh, "v2") - before["v2"] < 5 and time.monotonic() < deadline:
        time.sleep(0.1)  # a mirror is fire-and-forget: its copy may land after the answer
    assert headers_lines(mesh, "v2") - before["v2"] == 5
    assert headers_lines(mesh, "v1") - before["v1"] == 5
    # httpbin's /headers echoes the Host: the copies' answers are longer by exactly
    # "-shadow", the suffix Istio's mirrors carry (httpbin-shadow:8000).
    sizes = {v: int(re.findall(r'"GET /headers HTTP/1\.1" 200 (\d+)', mesh.logs(
        mesh.pod_name({"app": "httpbin", "version": v}, NS), NS))[-1]) for v in ("v1", "v2")}
    assert sizes["v2"] - sizes["v1"] == len("-shadow"), sizes


def test_source_labels_route_only_the_selected_client(mesh):
    mesh.apply(SUBSETS + "---\n" + vs("""\
  - match: [{sourceLabels: {app: sleep}}]
    route:
    - destination: {host: httpbin, subset: v2}
      headers: {response: {set: {x-served-by: v2}}}
""" + SERVED_BY), NS)
    with client(mesh, "sleep") as sleep, client(mesh, "other") as other:
        assert {sleep.get(f"{URL}/get").headers["x-served-by"] for _ in range(5)} == {"v2"}
        assert {other.get(f"{URL}/get").headers["x-served-by"] for _ in range(5)} == {"v1"}


def test_cors_preflight_is_answered_by_the_sidecar(mesh):
    mesh.apply(vs("""\
  - route: [{destination: {host: httpbin}}]
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
      allowMethods: [POST, GET]
      maxAge: 24h
"""), NS)
    preflight = {"Access-Control-Request-Method": "POST"}
    with client(mesh, "sleep") as http:
        allowed = http.options(f"{URL}/post", headers={**preflight,
                                                       "Origin": "https://example.com"})
        other = http.options(f"{URL}/post", headers={**preflight,
                                                     "Origin": "https://evil.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-methods"] == "POST,GET"
    assert allowed.headers["access-control-max-age"] == "86400"
    # Not an allowed origin: the preflight goes on to httpbin, which answers its own way.
    assert other.headers.get("access-control-allow-methods") != "POST,GET"


def test_consistent_hash_keeps_one_user_on_one_endpoint(mesh):
    mesh.apply(SUBSETS.replace("  host: httpbin\n", "  host: httpbin\n  trafficPolicy:\n"
                               "    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n"),
               NS)
    with client(mesh, "sleep") as http:
        http.get(f"{URL}/get")  # the new config is in place once a request went through
        for user in ("alice", "bob", "carol"):
            before = {v: headers_lines(mesh, v) for v in ("v1", "v2")}
            for _ in range(10):
                assert http.get(f"{URL}/headers", headers={"x-user": user}).status_code == 200
            grown = sorted(headers_lines(mesh, v) - before[v] for v in ("v1", "v2"))
            assert grown == [0, 10], (user, grown)


REDIRECT_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  gateways: [httpbin]
  http:
  - route: [{destination: {host: httpbin}}]
"""


def test_https_redirect_answers_plain_http_with_a_301(mesh):
    mesh.apply(REDIRECT_GATEWAY, NS)
    host, port = mesh.ingress_address()
    answer = httpx.get(f"http://{host}:{port}/get", headers={"Host": "httpbin.example.com"},
                       trust_env=False, follow_redirects=False)
    assert answer.status_code == 301
    assert answer.headers["location"] == "https://httpbin.example.com/get"


TCP_RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{port: 9000, sourceLabels: {app: sleep}}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v2}}]
  - route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v1}}]
"""


def tunnel_answer(mesh, app: str) -> str:
    """Open `CONNECT tcp-echo:9000` through the app's sidecar, send a line, read the echo."""
    proxy = httpx.URL(mesh.proxy_url(mesh.pod_name({"app": app}, NS), NS))
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(b"CONNECT tcp-echo:9000 HTTP/1.1\r\nHost: tcp-echo:9000\r\n\r\n")
        stream = sock.makefile("rb")
        assert stream.readline().split()[1] == b"200"
        while stream.readline() not in (b"\r\n", b""):
            pass
        sock.sendall(b"hello\n")
        return stream.readline().decode().strip()


def test_mesh_tcp_rules_route_sidecar_tunnels_by_source(mesh):
    mesh.apply("samples/tcp-echo/tcp-echo-services.yaml", NS)
    mesh.apply(TCP_RULES, NS)
    try:
        mesh.wait_ready(NS)
        assert {tunnel_answer(mesh, "sleep") for _ in range(5)} == {"two hello"}
        assert {tunnel_answer(mesh, "other") for _ in range(5)} == {"one hello"}
    finally:
        mesh.delete(TCP_RULES, NS)
        mesh.delete("samples/tcp-echo/tcp-echo-services.yaml", NS)


def test_rewrites_redirects_grpc_aborts_and_mirror_lists_on_envoy(mesh):
    mesh.apply(SUBSETS + "---\n" + vs("""\
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uriRegexRewrite: {match: "^/old/(.*)$", rewrite: "/anything/new/\\\\1"}}
    route: [{destination: {host: httpbin, subset: v1}}]
    mirrors:
    - destination: {host: httpbin, subset: v2}
      percentage: {value: 100}
    retries: {attempts: 1, retryOn: 5xx, backoff: 10ms, retryIgnorePreviousHosts: false}
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /get, scheme: https, port: 8443, redirectCode: 308}
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: httpbin}}]
"""), NS)
    before = headers_lines(mesh, "v2")
    with client(mesh, "sleep") as http:
        rewritten = http.get(f"{URL}/old/path")
        moved = http.get(f"{URL}/moved", follow_redirects=False)
        # A gRPC client's request: Envoy answers it gRPC's way, the status in a header.
        aborted = http.post(f"{URL}/grpc", headers={"content-type": "application/grpc"})
    assert rewritten.status_code == 200 and rewritten.json()["url"].endswith("/anything/new/path")
    assert (moved.status_code, moved.headers["location"]) == (308, "https://httpbin:8443/get")
    assert aborted.headers.get("grpc-status") == "14"
    deadline = time.monotonic() + 5
    log = ""
    while time.monotonic() < deadline and "/anything/new/path" not in log:
        log = mesh.logs(mesh.pod_name({"app": "httpbin", "version": "v2"}, NS), NS)
        time.sleep(0.1)
    assert '"GET /anything/new/path HTTP/1.1" 200' in log
    assert headers_lines(mesh, "v2") == before


def test_export_to_and_a_client_scoped_destination_rule_on_envoy(mesh):
    scoped = SUBSETS.replace("  host: httpbin\n", "  host: httpbin\n  workloadSelector: "
                             "{matchLabels: {app: sleep}}\n  trafficPolicy: "
                             "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n")
    mesh.apply(scoped, NS)

    def lb_policy(app: str) -> str:
        pod = mesh.pod_name({"app": app}, NS)
        dump = json.loads(mesh.proxy_admin(pod, NS, "config_dump?resource=dynamic_active_clusters"))
        return next(c["cluster"].get("lb_policy", "ROUND_ROBIN") for c in dump["configs"]
                    if c["cluster"]["name"] == f"outbound|8000||httpbin.{NS}.svc.cluster.local")

    assert lb_policy("sleep") == "RING_HASH" and lb_policy("other") == "LEAST_REQUEST"
    hidden = vs("  - route: [{destination: {host: httpbin, subset: v2}}]\n").replace(
        "  hosts: [httpbin]\n", "  hosts: [httpbin]\n  exportTo: [istio-system]\n")
    mesh.apply(SUBSETS + "---\n" + hidden, NS)
    with client(mesh, "sleep") as http:  # not exported to its own namespace: no v2 rule
        http.get(f"{URL}/get")
        before = {v: headers_lines(mesh, v) for v in ("v1", "v2")}
        for _ in range(20):
            http.get(f"{URL}/headers")
    grown = {v: headers_lines(mesh, v) - before[v] for v in ("v1", "v2")}
    assert grown["v1"] > 0 and grown["v2"] < 20, grown


def test_pool_outlier_warmup_and_budget_settings_are_accepted_by_envoy(mesh):
    # Envoy refuses config it cannot use (apply would raise ProxyRejectedError).
    mesh.apply(SUBSETS.replace("  host: httpbin\n", """  host: httpbin
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 5s, aggression: 1.5}}
    retryBudget: {percent: 30, minRetryConcurrency: 2}
    connectionPool:
      tcp: {tcpKeepalive: {probes: 3, time: 60s, interval: 10s}, maxConnectionDuration: 1h}
    outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}
"""), NS)
    with client(mesh, "sleep") as http:
        assert {http.get(f"{URL}/get").status_code for _ in range(5)} == {200}


def test_a_subset_hidden_from_a_client_answers_it_503(mesh):
    scoped = SUBSETS.replace("  host: httpbin\n", "  host: httpbin\n  workloadSelector: "
                             "{matchLabels: {app: sleep}}\n")
    mesh.apply(scoped + "---\n" + vs("  - route: [{destination: {host: httpbin, subset: v1}}]\n"),
               NS)
    with client(mesh, "sleep") as sleep, client(mesh, "other") as other:
        assert sleep.get(f"{URL}/get").status_code == 200
        assert other.get(f"{URL}/get").status_code == 503


def test_kubectl_logs_of_the_deployment_shows_its_access_log(mesh, capsys):
    # Istio's mirroring task: `kubectl logs deploy/httpbin-v1 -c httpbin`.
    from lablib.shims import kubectl_main

    mesh.apply(SUBSETS + "---\n" + vs(SERVED_BY), NS)
    with client(mesh, "sleep") as http:
        assert http.get(f"{URL}/headers").status_code == 200
    capsys.readouterr()
    assert kubectl_main(["logs", "-n", NS, "deploy/httpbin-v1", "-c", "httpbin"]) == 0
    assert '"GET /headers HTTP/1.1" 200' in capsys.readouterr().out


def test_mesh_tls_rules_route_sidecar_tunnels_by_the_host_asked_for(mesh):
    rules = TCP_RULES.split("---\n")[0] + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tls:
  - match: [{sniHosts: [tcp-echo], port: 9000}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v2}}]
"""
    mesh.apply("samples/tcp-echo/tcp-echo-services.yaml", NS)
    mesh.apply(rules, NS)
    try:
        mesh.wait_ready(NS)
        assert {tunnel_answer(mesh, "other") for _ in range(5)} == {"two hello"}
    finally:
        mesh.delete(rules, NS)
        mesh.delete("samples/tcp-echo/tcp-echo-services.yaml", NS)
