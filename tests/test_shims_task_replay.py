"""Istio's task pages replayed through the kubectl/istioctl shims on one real local mesh, in
the order a learner works through them (istio.io, Tasks ▸ Traffic Management, Security,
Observability; Istio 1.20). The commands are the pages' own, written here from reading them:
the `default` namespace with injection, the sample files under samples/, `$GATEWAY_URL` from
the ingress Service. Each test is one task, from its "Before you begin" to its "Cleanup", and
asserts what the page shows; traffic shares are checked with a binomial tolerance.

Where the local mesh differs by design the replay says so in a comment: the ingress address is
the NodePort fallback the pages give for clusters without a load balancer (the ingress task
also takes the load balancer's address when the mesh may bind it).

Every task has a time limit (`LIMITS`): a task that hangs fails with the command it hung in.
Tasks are plain functions of the `sh` fixture, so the one still missing here (HTTP
authorization, which needs AuthorizationPolicy) is added as a further `test_NN_` function with
its own limit, before the plug-in CA task (which reinstalls Istio).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from test_shims_walkthrough import (
    BREAKER,
    PASSTHROUGH,
    Result,
    Shell,
    page,
    pages,
    sign_in,
    versions,
)
from walkthrough_samples import MY_NGINX, NGINX_CONF

from lablib import traffic
from lablib.apps.bookinfo import classify
from lablib.apps.bookinfo._texts import RATING_ERROR, REVIEWS_UNAVAILABLE
from lablib.local.client import LocalBackend
from lablib.local.state import StateDir
from lablib.shims import env as shim_env

pytestmark = pytest.mark.envoy
NET = "samples/bookinfo/networking"
BOOKINFO = "samples/bookinfo/platform/kube/bookinfo.yaml"
# Seconds each task may take, setup and cleanup included (a loaded CI machine is slow, a hung
# command is slower).
LIMITS = {"test_00": 120, "test_01": 120, "test_02": 120, "test_03": 180, "test_04": 120,
          "test_05": 180, "test_06": 180, "test_07": 120, "test_08": 180, "test_09": 240,
          "test_10": 180, "test_11": 180, "test_12": 180, "test_13": 240}
DEFAULT_LIMIT = 180


class TimedShell(Shell):
    """The walkthrough's shell with a deadline: no command outlives the task's time limit."""

    deadline = float("inf")

    def run(self, line: str, stdin: str = "", timeout: float = 180) -> Result:
        left = self.deadline - time.monotonic()
        assert left > 0, f"the task's time limit ran out before: {line}"
        return super().run(line, stdin, timeout=min(timeout, left))


@pytest.fixture(scope="module")
def sh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TimedShell]:
    """One mesh for the module (its own LAB_MESH), with Istio installed as the pages' "Before
    you begin" asks (demo profile, injection in `default`); stopped at the end."""
    state = tmp_path_factory.mktemp("task-replay")
    work = tmp_path_factory.mktemp("learner")
    env = dict(os.environ, LAB_MESH=f"tasks-{os.getpid()}", LAB_STATE_DIR=str(state),
               LAB_MESH_OWNER=str(os.getpid()), XDG_CACHE_HOME=str(state / "cache"))
    env.pop("LAB_BACKEND", None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
        env["PATH"] = f"{shim_env.shim_dir()}{os.pathsep}{env['PATH']}"
    shell = TimedShell(env, work)
    # The pages run from the Istio release folder; the kit's root holds the same samples/.
    (work / "samples").symlink_to(Path(__file__).resolve().parent.parent / "samples")
    (work / "tools").symlink_to(Path(__file__).resolve().parent.parent / "tools")
    try:
        yield shell
    finally:
        shell.deadline = float("inf")
        shell.run("istioctl uninstall --purge -y")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LAB_MESH", env["LAB_MESH"])
            patch.setenv("LAB_STATE_DIR", env["LAB_STATE_DIR"])
            left = LocalBackend.attach(StateDir())
            if left is not None:
                left.uninstall()


@pytest.fixture(autouse=True)
def time_limit(request: pytest.FixtureRequest, sh: TimedShell) -> Iterator[None]:
    """The task's time limit, enforced on every command it runs and on the whole."""
    limit = LIMITS.get(request.node.name[:7], DEFAULT_LIMIT)
    began = time.monotonic()
    sh.deadline = began + limit
    yield
    sh.deadline = float("inf")
    assert time.monotonic() - began <= limit, f"{request.node.name} took over {limit} s"


def bookinfo_up(sh: TimedShell) -> None:
    """The Bookinfo page's steps the traffic tasks start from: the app, its gateway and the
    destination rules, every deployment available."""
    sh.ok(f"kubectl apply -f {BOOKINFO}")
    sh.ok(f"kubectl apply -f {NET}/bookinfo-gateway.yaml")
    sh.ok(f"kubectl apply -f {NET}/destination-rule-all.yaml")
    sh.ok("kubectl wait --for=condition=available deployment --all --timeout=120s")


def gateway_url(sh: TimedShell) -> str:
    """`$GATEWAY_URL` as the Bookinfo page builds it on a cluster without a load balancer
    (the node port and the gateway pod's host IP)."""
    return sh.ok(
        "export INGRESS_PORT=$(kubectl -n istio-system get service istio-ingressgateway -o "
        "jsonpath='{.spec.ports[?(@.name==\"http2\")].nodePort}'); "
        "export INGRESS_HOST=$(kubectl get po -l istio=ingressgateway -n istio-system -o "
        "jsonpath='{.items[0].status.hostIP}'); echo -n $INGRESS_HOST:$INGRESS_PORT")


# --- the tasks, in order ---------------------------------------------------------------------


def test_00_install_and_bookinfo(sh: TimedShell) -> None:
    sh.ok("istioctl install --set profile=demo -y")
    assert sh.ok("kubectl label namespace default istio-injection=enabled") == \
        "namespace/default labeled\n"
    bookinfo_up(sh)
    url = gateway_url(sh)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", url), url
    title = sh.ok(f'curl -s "http://{url}/productpage" | grep -o "<title>.*</title>"')
    assert title == "<title>Simple Bookstore App</title>\n"
    # Applied as v1alpha3, read back at the version Istio 1.20 serves.
    assert sh.ok("kubectl get vs bookinfo -o jsonpath='{.apiVersion}'") == \
        "networking.istio.io/v1beta1"
    assert sh.ok("kubectl get dr reviews -o yaml").startswith(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n")


def test_01_request_routing(sh: TimedShell) -> None:
    sh.ok(f"kubectl apply -f {NET}/virtual-service-all-v1.yaml")
    assert "reviews" in sh.ok("kubectl get virtualservices -o yaml")
    assert "reviews" in sh.ok("kubectl get destinationrules -o yaml")
    traffic.check_shares(versions(sh, 10), {"v1": 1.0})
    sh.ok(f"kubectl apply -f {NET}/virtual-service-reviews-test-v2.yaml")
    jason = sign_in(sh, "jason")
    assert {classify(p.html) for p in pages(sh, 5, jason)} == {"v2"}  # black stars
    assert {classify(p.html) for p in pages(sh, 5)} == {"v1"}  # no stars when signed out
    sh.ok(f"kubectl delete -f {NET}/virtual-service-all-v1.yaml")


def test_02_fault_injection(sh: TimedShell) -> None:
    sh.ok(f"kubectl apply -f {NET}/virtual-service-all-v1.yaml")
    sh.ok(f"kubectl apply -f {NET}/virtual-service-reviews-test-v2.yaml")
    sh.ok(f"kubectl apply -f {NET}/virtual-service-ratings-test-delay.yaml")
    fault = sh.ok("kubectl get virtualservice ratings -o yaml")
    assert "fixedDelay: 7s" in fault and "exact: jason" in fault
    jason = sign_in(sh, "jason")
    delayed = page(sh, jason)
    # The page's "bug": productpage gives up on reviews (3 s, one retry) before the 7 s delay.
    assert delayed.status == 200 and REVIEWS_UNAVAILABLE in delayed.html
    assert 5.0 <= delayed.seconds <= 8.5, delayed.seconds
    sh.ok(f"kubectl apply -f {NET}/virtual-service-ratings-test-abort.yaml")
    aborted = page(sh, jason)
    assert RATING_ERROR in aborted.html and aborted.seconds < 3
    assert RATING_ERROR not in page(sh).html
    sh.ok(f"kubectl delete -f {NET}/virtual-service-all-v1.yaml")


def test_03_traffic_shifting(sh: TimedShell) -> None:
    sh.ok(f"kubectl apply -f {NET}/virtual-service-all-v1.yaml")
    traffic.check_shares(versions(sh, 10), {"v1": 1.0})
    sh.ok(f"kubectl apply -f {NET}/virtual-service-reviews-50-v3.yaml")
    shown = sh.ok("kubectl get virtualservice reviews -o yaml")
    assert shown.count("weight: 50") == 2 and "subset: v3" in shown
    table = traffic.check_shares(versions(sh, 60), {"v1": 0.5, "v3": 0.5})
    assert set(table["version"]) == {"v1", "v3"}
    sh.ok(f"kubectl apply -f {NET}/virtual-service-reviews-v3.yaml")
    traffic.check_shares(versions(sh, 10), {"v3": 1.0})
    sh.ok(f"kubectl delete -f {NET}/virtual-service-all-v1.yaml")


RATINGS_DELAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
"""


def reviews_v2(timeout: str = "") -> str:
    line = f"    timeout: {timeout}\n" if timeout else ""
    return ("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n"
            "  name: reviews\nspec:\n  hosts:\n  - reviews\n  http:\n  - route:\n"
            "    - destination:\n        host: reviews\n        subset: v2\n" + line)


def test_04_request_timeouts(sh: TimedShell) -> None:
    sh.ok(f"kubectl apply -f {NET}/virtual-service-all-v1.yaml")
    sh.ok("kubectl apply -f - <<EOF\n" + reviews_v2() + "EOF")
    sh.ok("kubectl apply -f - <<EOF\n" + RATINGS_DELAY + "EOF")
    slow = page(sh)
    assert classify(slow.html) == "v2" and slow.seconds >= 1.9  # stars, 2 s late
    sh.ok("kubectl apply -f - <<EOF\n" + reviews_v2("0.5s") + "EOF")
    cut = page(sh)
    # "returns in about 1 second, instead of 2": productpage's one retry of a 0.5 s timeout.
    assert REVIEWS_UNAVAILABLE in cut.html and 0.9 <= cut.seconds < 1.9, cut.seconds
    sh.ok(f"kubectl delete -f {NET}/virtual-service-all-v1.yaml")


def test_05_dangling_routes_answer_503_and_deletes_are_never_refused(sh: TimedShell) -> None:
    """Every task's cleanup deletes Bookinfo while the gateway's VirtualService still names
    productpage: the delete goes through, the route answers 503 (no cluster) as on a cluster,
    and istioctl analyze names the dangling reference (#14 item 10)."""
    url = gateway_url(sh)
    deleted = sh.run(f"kubectl delete -f {BOOKINFO}")
    assert deleted.code == 0 and 'deployment.apps "productpage-v1" deleted' in deleted.out
    assert sh.ok(f'curl -s -o /dev/null -w "%{{http_code}}" http://{url}/productpage') == "503"
    analyzed = sh.run("istioctl analyze")
    assert analyzed.code == 79
    assert ('Error [IST0101] (VirtualService default/bookinfo) Referenced host not found: '
            '"productpage"') in analyzed.out + analyzed.err
    # Applying a route to a host that does not exist is accepted with a warning, as Istio does.
    reapplied = sh.run(f"kubectl apply -f {NET}/bookinfo-gateway.yaml")
    assert reapplied.code == 0, reapplied.err
    sh.ok("kubectl delete -f samples/bookinfo/networking/bookinfo-gateway.yaml")
    fresh = sh.run(f"kubectl apply -f {NET}/bookinfo-gateway.yaml")
    assert fresh.code == 0 and "virtualservice.networking.istio.io/bookinfo created" in fresh.out
    assert 'Warning: Error [IST0101]' in fresh.err and '"productpage"' in fresh.err
    bookinfo_up(sh)
    assert sh.ok(f'curl -s -o /dev/null -w "%{{http_code}}" http://{url}/productpage') == "200"


FORTIO_POD = "export FORTIO_POD=$(kubectl get pods -l app=fortio -o " \
             "'jsonpath={.items[0].metadata.name}'); "


def test_06_circuit_breaking(sh: TimedShell) -> None:
    sh.ok("kubectl apply -f samples/httpbin/httpbin.yaml")
    sh.ok("kubectl apply -f - <<EOF\n" + BREAKER + "EOF")
    assert "http1MaxPendingRequests: 1" in sh.ok("kubectl get destinationrule httpbin -o yaml")
    sh.ok("kubectl apply -f samples/httpbin/sample-client/fortio-deploy.yaml")
    sh.ok("kubectl wait --for=condition=available deploy/fortio-deploy deploy/httpbin "
          "--timeout=60s")
    one = sh.ok(FORTIO_POD + 'kubectl exec "$FORTIO_POD" -c fortio -- /usr/bin/fortio curl '
                "-quiet http://httpbin:8000/get")
    assert one.startswith("HTTP/1.1 200 OK")
    load = sh.ok(FORTIO_POD + 'kubectl exec "$FORTIO_POD" -c fortio -- /usr/bin/fortio load '
                 "-c 3 -qps 0 -n 30 -loglevel Warning http://httpbin:8000/get")
    codes = {int(c): int(n) for c, n in re.findall(r"^Code (\d+) : (\d+)", load, re.M)}
    assert codes.get(200, 0) > 0 and codes.get(503, 0) > 0 and sum(codes.values()) == 30
    stats = sh.ok(FORTIO_POD + 'kubectl exec "$FORTIO_POD" -c istio-proxy -- pilot-agent '
                  "request GET stats | grep httpbin | grep pending")
    prefix = "cluster.outbound|8000||httpbin.default.svc.cluster.local."
    names = {line.split(": ")[0].removeprefix(prefix) for line in stats.splitlines()}
    # The seven lines the page shows, remaining_pending among them (Istio's track_remaining).
    assert {"circuit_breakers.default.remaining_pending", "circuit_breakers.default."
            "rq_pending_open", "circuit_breakers.high.rq_pending_open",
            "upstream_rq_pending_active", "upstream_rq_pending_failure_eject",
            "upstream_rq_pending_overflow", "upstream_rq_pending_total"} <= names, stats
    overflow = re.search(r"upstream_rq_pending_overflow: (\d+)$", stats, re.M)
    assert overflow and int(overflow[1]) > 0
    sh.ok("kubectl delete destinationrule httpbin")
    sh.ok("kubectl delete -f samples/httpbin/sample-client/fortio-deploy.yaml")
    sh.ok("kubectl delete -f samples/httpbin/httpbin.yaml")


HTTPBIN_GATEWAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "httpbin.example.com"
"""
HTTPBIN_ROUTES = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - httpbin-gateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"""


def test_07_ingress_gateways(sh: TimedShell) -> None:
    sh.ok("kubectl apply -f samples/httpbin/httpbin.yaml")
    sh.ok("kubectl apply -f - <<EOF\n" + HTTPBIN_GATEWAY + "EOF")
    sh.ok("kubectl apply -f - <<EOF\n" + HTTPBIN_ROUTES + "EOF")
    table = sh.ok("kubectl get svc istio-ingressgateway -n istio-system").splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert re.fullmatch(r"127\.(9[6-9]|10[0-9]|11[01])\.\d+\.\d+", table[1].split()[2])
    external = table[1].split()[3]
    # The page's two ways in: the load balancer's address when EXTERNAL-IP is set (here when
    # the mesh may bind ports below 1024), and the node port fallback, which always works.
    urls = [gateway_url(sh)]
    if external != "<pending>":
        lb = sh.ok("export INGRESS_HOST=$(kubectl -n istio-system get service "
                   "istio-ingressgateway -o jsonpath='{.status.loadBalancer.ingress[0].ip}'); "
                   "export INGRESS_PORT=$(kubectl -n istio-system get service "
                   "istio-ingressgateway -o jsonpath='{.spec.ports[?(@.name==\"http2\")].port}')"
                   "; echo -n $INGRESS_HOST:$INGRESS_PORT")
        assert lb == f"{external}:80"
        urls.append(lb)
    for url in urls:
        head = sh.ok(f'curl -s -I -HHost:httpbin.example.com "http://{url}/status/200"')
        assert head.startswith("HTTP/1.1 200 OK") and "server: istio-envoy" in head
    other = sh.ok(f'curl -s -I -HHost:httpbin.example.com "http://{url}/headers"')
    assert other.startswith("HTTP/1.1 404 Not Found")
    sh.ok("kubectl delete gateway httpbin-gateway")
    sh.ok("kubectl delete virtualservice httpbin")
    sh.ok("kubectl delete --ignore-not-found=true -f samples/httpbin/httpbin.yaml")


def ingress_ports(sh: TimedShell) -> str:
    """The exports the ingress pages give for a cluster without a load balancer."""
    service = "kubectl -n istio-system get service istio-ingressgateway -o jsonpath="
    return (f"export INGRESS_HOST=$(kubectl get po -l istio=ingressgateway -n istio-system "
            f"-o jsonpath='{{.items[0].status.hostIP}}'); "
            f"export SECURE_INGRESS_PORT=$({service}'{{.spec.ports[?(@.name==\"https\")]"
            f".nodePort}}'); "
            f"export TCP_INGRESS_PORT=$({service}'{{.spec.ports[?(@.name==\"tcp\")]"
            f".nodePort}}'); ")


MTLS_LOOP = """for from in "foo" "bar" "legacy"; do for to in "foo" "bar"; do kubectl exec \
"$(kubectl get pod -l app=sleep -n ${from} -o jsonpath={.items..metadata.name})" -c sleep \
-n ${from} -- curl http://httpbin.${to}:8000/ip -s -o /dev/null -w \
"sleep.${from} to httpbin.${to}: %{http_code}\\n"; done; done"""


def strict(namespace: str) -> str:
    return (f"kubectl apply -n {namespace} -f - <<EOF\napiVersion: security.istio.io/v1beta1\n"
            "kind: PeerAuthentication\nmetadata:\n  name: \"default\"\nspec:\n  mtls:\n"
            "    mode: STRICT\nEOF")


def test_08_mutual_tls_migration(sh: TimedShell) -> None:
    for ns in ("foo", "bar"):
        sh.ok(f"kubectl create ns {ns}")
        sh.ok(f"kubectl apply -f <(istioctl kube-inject -f samples/httpbin/httpbin.yaml) -n {ns}")
        sh.ok(f"kubectl apply -f <(istioctl kube-inject -f samples/sleep/sleep.yaml) -n {ns}")
    sh.ok("kubectl create ns legacy")
    sh.ok("kubectl apply -f samples/sleep/sleep.yaml -n legacy")
    for ns in ("foo", "bar", "legacy"):
        sh.ok(f"kubectl wait --for=condition=ready pod --all -n {ns} --timeout=60s")
    before = sh.ok(MTLS_LOOP).splitlines()
    assert before == [f"sleep.{a} to httpbin.{b}: 200" for a in ("foo", "bar", "legacy")
                      for b in ("foo", "bar")]
    assert sh.run("kubectl get peerauthentication --all-namespaces").err == \
        "No resources found\n"
    # The Service's cluster IP reaches it too, from a pod with a sidecar and one without.
    ip = sh.ok("kubectl get svc httpbin -n foo -o jsonpath={.spec.clusterIP}")
    assert re.fullmatch(r"127\.(9[6-9]|10[0-9]|11[01])\.\d+\.\d+", ip), ip
    for ns in ("bar", "legacy"):
        assert sh.ok(f'kubectl exec "$(kubectl get pod -l app=sleep -n {ns} -o '
                     f'jsonpath={{.items..metadata.name}})" -c sleep -n {ns} -- curl '
                     f'http://{ip}:8000/ip -s -o /dev/null -w "%{{http_code}}"') == "200"
    sh.ok(strict("foo"))
    foo_strict = sh.run(MTLS_LOOP)
    # The plaintext client is reset by foo's sidecar: curl prints 000 and exits 56.
    assert "sleep.legacy to httpbin.foo: 000" in foo_strict.out.splitlines()
    assert "sleep.legacy to httpbin.bar: 200" in foo_strict.out.splitlines()
    assert "command terminated with exit code 56" in foo_strict.err
    sh.ok(strict("istio-system"))
    mesh_strict = sh.run(MTLS_LOOP).out.splitlines()
    assert mesh_strict[-2:] == ["sleep.legacy to httpbin.foo: 000",
                                "sleep.legacy to httpbin.bar: 000"]
    assert all(line.endswith(": 200") for line in mesh_strict[:4])
    sh.ok("kubectl delete peerauthentication -n foo default")
    sh.ok("kubectl delete peerauthentication -n istio-system default")
    sh.ok("kubectl delete ns foo bar legacy")


SECURE_GATEWAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: {mode}
      credentialName: httpbin-credential
    hosts:
    - httpbin.example.com
"""
SECURE_ROUTES = HTTPBIN_ROUTES.replace("httpbin-gateway", "mygateway").replace(
    '"httpbin.example.com"', "httpbin.example.com")
EXAMPLE_CERTS = """\
mkdir -p example_certs1
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' \
  -keyout example_certs1/example.com.key -out example_certs1/example.com.crt
openssl req -out example_certs1/httpbin.example.com.csr -newkey rsa:2048 -nodes \
  -keyout example_certs1/httpbin.example.com.key \
  -subj "/CN=httpbin.example.com/O=httpbin organization"
openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt \
  -CAkey example_certs1/example.com.key -set_serial 0 -in example_certs1/httpbin.example.com.csr \
  -out example_certs1/httpbin.example.com.crt
openssl req -out example_certs1/client.example.com.csr -newkey rsa:2048 -nodes \
  -keyout example_certs1/client.example.com.key \
  -subj "/CN=client.example.com/O=client organization"
openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt \
  -CAkey example_certs1/example.com.key -set_serial 1 -in example_certs1/client.example.com.csr \
  -out example_certs1/client.example.com.crt
"""
TEAPOT = ('curl -s -HHost:httpbin.example.com --resolve '
          '"httpbin.example.com:$SECURE_INGRESS_PORT:$INGRESS_HOST" --cacert '
          'example_certs1/example.com.crt {client}'
          '"https://httpbin.example.com:$SECURE_INGRESS_PORT/status/418"')


def test_09_secure_gateways(sh: TimedShell) -> None:
    sh.ok("kubectl apply -f samples/httpbin/httpbin.yaml")
    sh.ok(EXAMPLE_CERTS)
    sh.ok("kubectl create -n istio-system secret tls httpbin-credential "
          "--key=example_certs1/httpbin.example.com.key "
          "--cert=example_certs1/httpbin.example.com.crt")
    sh.ok("kubectl apply -f - <<EOF\n" + SECURE_GATEWAY.format(mode="SIMPLE") + "EOF")
    sh.ok("kubectl apply -f - <<EOF\n" + SECURE_ROUTES + "EOF")
    assert "-=[ teapot ]=-" in sh.ok(ingress_ports(sh) + TEAPOT.format(client=""))
    # Mutual TLS: the credential gains the CA that signs clients.
    sh.ok("kubectl -n istio-system delete secret httpbin-credential")
    sh.ok("kubectl create -n istio-system secret generic httpbin-credential "
          "--from-file=tls.key=example_certs1/httpbin.example.com.key "
          "--from-file=tls.crt=example_certs1/httpbin.example.com.crt "
          "--from-file=ca.crt=example_certs1/example.com.crt")
    sh.ok("kubectl apply -f - <<EOF\n" + SECURE_GATEWAY.format(mode="MUTUAL") + "EOF")
    refused = sh.run(ingress_ports(sh) + TEAPOT.format(client=""))
    assert refused.code != 0 and "teapot" not in refused.out  # no client certificate
    client = ("--cert example_certs1/client.example.com.crt "
              "--key example_certs1/client.example.com.key ")
    assert "-=[ teapot ]=-" in sh.ok(ingress_ports(sh) + TEAPOT.format(client=client))
    sh.ok("kubectl delete gateway mygateway")
    sh.ok("kubectl delete virtualservice httpbin")
    sh.ok("kubectl delete --ignore-not-found=true -n istio-system secret httpbin-credential")
    sh.ok("kubectl delete --ignore-not-found=true -f samples/httpbin/httpbin.yaml")


NGINX_CERTS = """\
openssl req -out example_certs1/nginx.example.com.csr -newkey rsa:2048 -nodes \\
  -keyout example_certs1/nginx.example.com.key -subj "/CN=nginx.example.com/O=some organization"
openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt \\
  -CAkey example_certs1/example.com.key -set_serial 0 -in example_certs1/nginx.example.com.csr \\
  -out example_certs1/nginx.example.com.crt
"""
NGINX_POD = "$(kubectl get pod -l run=my-nginx -o jsonpath={.items..metadata.name})"


def test_10_ingress_gateway_without_tls_termination(sh: TimedShell) -> None:
    sh.ok(NGINX_CERTS)  # signed by the example.com root of the secure gateways task
    sh.ok("kubectl create secret tls nginx-server-certs --key "
          "example_certs1/nginx.example.com.key --cert example_certs1/nginx.example.com.crt")
    (sh.work / "nginx.conf").write_text(NGINX_CONF)
    sh.ok("kubectl create configmap nginx-configmap --from-file=nginx.conf=./nginx.conf")
    sh.ok("kubectl apply -f - <<EOF\n" + MY_NGINX.replace("nginx-tls-secret",
                                                         "nginx-server-certs") + "EOF")
    sh.ok("kubectl wait --for=condition=available deploy/my-nginx --timeout=60s")
    # The page's check from the proxy container: 127.0.0.1:443 is nginx itself in the pod.
    inside = sh.run(f'kubectl exec "{NGINX_POD}" -c istio-proxy -- curl -sS -v -k --resolve '
                    "nginx.example.com:443:127.0.0.1 https://nginx.example.com")
    assert inside.code == 0, inside.err
    assert "<title>Welcome to nginx!</title>" in inside.out
    assert re.search(r"subject: CN\s*=\s*nginx\.example\.com", inside.err), inside.err
    sh.ok("kubectl apply -f - <<EOF\n" + PASSTHROUGH + "EOF")
    answer = sh.ok(ingress_ports(sh) + 'curl -v --resolve "nginx.example.com:$SECURE_INGRESS_'
                   'PORT:$INGRESS_HOST" --cacert example_certs1/example.com.crt '
                   '"https://nginx.example.com:$SECURE_INGRESS_PORT"')
    assert "<title>Welcome to nginx!</title>" in answer
    sh.ok("kubectl delete secret nginx-server-certs")
    sh.ok("kubectl delete configmap nginx-configmap")
    sh.ok("kubectl delete service my-nginx")
    sh.ok("kubectl delete deployment my-nginx")
    sh.ok("kubectl delete gateway mygateway")
    sh.ok("kubectl delete virtualservice nginx")


TCP_NS = "istio-io-tcp-traffic-shifting"
SLEEP = (f"export SLEEP=$(kubectl get pod -l app=sleep -n {TCP_NS} -o "
         "jsonpath={.items..metadata.name}); ")
TCP_LOOP = (f'for i in {{1..{{n}}}}; do kubectl exec "$SLEEP" -c sleep -n {TCP_NS} -- sh -c '
            '"(date; sleep 1) | nc $INGRESS_HOST $TCP_INGRESS_PORT"; done')


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")
def test_11_tcp_traffic_shifting(sh: TimedShell) -> None:
    sh.ok(f"kubectl create namespace {TCP_NS}")
    sh.ok(f"kubectl label namespace {TCP_NS} istio-injection=enabled")
    sh.ok(f"kubectl apply -f samples/sleep/sleep.yaml -n {TCP_NS}")
    sh.ok(f"kubectl apply -f samples/tcp-echo/tcp-echo-services.yaml -n {TCP_NS}")
    sh.ok(f"kubectl apply -f samples/tcp-echo/tcp-echo-all-v1.yaml -n {TCP_NS}")
    sh.ok(f"kubectl wait --for=condition=ready pod --all -n {TCP_NS} --timeout=60s")
    first = sh.ok(ingress_ports(sh) + SLEEP + TCP_LOOP.replace("{n}", "3")).splitlines()
    assert len(first) == 3 and all(line.startswith("one ") for line in first), first
    sh.ok(f"kubectl apply -f samples/tcp-echo/tcp-echo-20-v2.yaml -n {TCP_NS}")
    shown = sh.ok(f"kubectl get virtualservice tcp-echo -o yaml -n {TCP_NS}")
    assert "weight: 80" in shown and "weight: 20" in shown
    # The page's 20 rounds; each answer names the version that echoed it.
    answers = sh.ok(ingress_ports(sh) + SLEEP + TCP_LOOP.replace("{n}", "20")).splitlines()
    frame = pd.DataFrame({"version": [line.split()[0] for line in answers]})
    assert len(frame) == 20
    traffic.check_shares(frame, {"one": 0.8, "two": 0.2})
    sh.ok(f"kubectl delete -f samples/tcp-echo/tcp-echo-all-v1.yaml -n {TCP_NS}")
    sh.ok(f"kubectl delete -f samples/sleep/sleep.yaml -n {TCP_NS}")
    sh.ok(f"kubectl delete -f samples/tcp-echo/tcp-echo-services.yaml -n {TCP_NS}")
    sh.ok(f"kubectl delete namespace {TCP_NS}")


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")
def test_12_querying_metrics(sh: TimedShell) -> None:
    sh.ok("kubectl apply -f samples/addons/prometheus.yaml")
    sh.ok("kubectl rollout status deployment/prometheus -n istio-system")
    listed = sh.ok("kubectl -n istio-system get svc prometheus").splitlines()
    assert listed[1].split()[:2] == ["prometheus", "ClusterIP"] and "9090/TCP" in listed[1]
    url = gateway_url(sh)
    sh.ok(f'for i in $(seq 1 10); do curl -s -o /dev/null "http://{url}/productpage"; done')
    query = ("curl -s -G {url}/api/v1/query --data-urlencode 'query=istio_requests_total"
             '{{destination_service="productpage.default.svc.cluster.local"}}\'')
    with sh.dashboard("prometheus") as prometheus:
        deadline = time.monotonic() + 60
        while True:  # Prometheus finds the proxies at its next discovery round
            answer = sh.ok(query.format(url=prometheus))
            counts = [int(v) for v in re.findall(r'"value":\[[\d.]+,"(\d+)"\]', answer)]
            if sum(counts) >= 10 or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert '"destination_service":"productpage.default.svc.cluster.local"' in answer
    assert sum(counts) >= 10, answer


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")
def test_12_tcp_metrics(sh: TimedShell) -> None:
    """Collecting metrics for TCP services: ratings v2 reads MongoDB, and Prometheus counts
    the TCP connections from ratings-v2 to mongodb-v1."""
    sh.ok("kubectl apply -f samples/bookinfo/platform/kube/bookinfo-ratings-v2.yaml")
    sh.ok("kubectl apply -f samples/bookinfo/platform/kube/bookinfo-db.yaml")
    sh.ok(f"kubectl apply -f {NET}/destination-rule-all.yaml")
    sh.ok(f"kubectl apply -f {NET}/virtual-service-ratings-db.yaml")
    sh.ok("kubectl wait --for=condition=available deploy/ratings-v2 deploy/mongodb-v1 "
          "--timeout=60s")
    url = gateway_url(sh)
    stars = sh.ok(f'for i in $(seq 1 5); do curl -s "http://{url}/productpage" | grep -c '
                  '"glyphicon-star"; done').split()
    assert stars and all(int(n) > 0 for n in stars), stars  # v3's stars, from the database
    query = ("curl -s -G {url}/api/v1/query --data-urlencode "
             "'query=istio_tcp_connections_opened_total{{destination_workload=\"mongodb-v1\","
             "reporter=\"destination\"}}'")
    with sh.dashboard("prometheus") as prometheus:
        deadline = time.monotonic() + 60
        while True:
            answer = sh.ok(query.format(url=prometheus))
            counts = [int(v) for v in re.findall(r'"value":\[[\d.]+,"(\d+)"\]', answer)]
            if sum(counts) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert '"source_workload":"ratings-v2"' in answer and sum(counts) >= 5, answer
    sh.ok(f"kubectl delete -f {NET}/virtual-service-ratings-db.yaml")
    sh.ok("kubectl delete -f samples/bookinfo/platform/kube/bookinfo-ratings-v2.yaml")
    sh.ok("kubectl delete -f samples/bookinfo/platform/kube/bookinfo-db.yaml")


def test_12_helloworld_applied_part_by_part_with_labels(sh: TimedShell) -> None:
    """The helloworld sample as the tasks deploy it: the Service, then each version, chosen
    from one file with `-l` (#14 item 5)."""
    hello = "samples/helloworld/helloworld.yaml"
    assert sh.ok(f"kubectl apply -f {hello} -l service=helloworld") == \
        "service/helloworld created\n"
    assert sh.ok(f"kubectl apply -f {hello} -l version=v1") == \
        "deployment.apps/helloworld-v1 created\n"
    assert sh.ok(f"kubectl apply -f {hello} -l version=v2") == \
        "deployment.apps/helloworld-v2 created\n"
    sh.ok("kubectl apply -f samples/curl/curl.yaml")
    sh.ok("kubectl wait --for=condition=available deploy/helloworld-v1 deploy/helloworld-v2 "
          "deploy/curl --timeout=60s")
    out = sh.ok('kubectl exec deploy/curl -c curl -- sh -c "for i in \\$(seq 20); do curl -sS '
                'helloworld:5000/hello; done"').splitlines()
    assert len(out) == 20 and all(re.fullmatch(r"Hello version: v[12], instance: "
                                               r"helloworld-v[12]-\S+", line) for line in out)
    assert {line.split(",")[0] for line in out} == {"Hello version: v1", "Hello version: v2"}
    sh.ok(f"kubectl delete -f {hello}")
    sh.ok("kubectl delete -f samples/curl/curl.yaml")


SPLIT_CERTS = r"""sed -n '/-----BEGIN CERTIFICATE-----/{:start /-----END CERTIFICATE-----/!{N;b start};/.*/p}' httpbin-proxy-cert.txt > certs.pem
awk 'BEGIN {counter=0;} /BEGIN CERT/{counter++} { print > "proxy-cert-" counter ".pem"}' < certs.pem"""  # noqa: E501


def test_13_plug_in_ca_certificates(sh: TimedShell) -> None:
    # The page starts from a cluster without Istio: istiod reads cacerts when it starts.
    sh.ok("istioctl uninstall --purge -y")
    sh.ok("mkdir -p certs && cd certs && make -f ../tools/certs/Makefile.selfsigned.mk root-ca "
          "&& make -f ../tools/certs/Makefile.selfsigned.mk cluster1-cacerts")
    sh.ok("kubectl create namespace istio-system")
    sh.ok("cd certs && kubectl create secret generic cacerts -n istio-system "
          "--from-file=cluster1/ca-cert.pem --from-file=cluster1/ca-key.pem "
          "--from-file=cluster1/root-cert.pem --from-file=cluster1/cert-chain.pem")
    sh.ok("istioctl install --set profile=demo -y")
    sh.ok("kubectl create ns foo")
    sh.ok("kubectl apply -f <(istioctl kube-inject -f samples/httpbin/httpbin.yaml) -n foo")
    sh.ok("kubectl apply -f <(istioctl kube-inject -f samples/sleep/sleep.yaml) -n foo")
    sh.ok(strict("foo"))
    shown = sh.run('kubectl exec "$(kubectl get pod -l app=sleep -n foo -o '
                   'jsonpath={.items..metadata.name})" -c istio-proxy -n foo -- openssl '
                   "s_client -showcerts -connect httpbin.foo:8000 > httpbin-proxy-cert.txt")
    assert "BEGIN CERTIFICATE" in (sh.work / "httpbin-proxy-cert.txt").read_text(), shown.err
    sh.ok(SPLIT_CERTS)
    for ours, theirs in (("root-cert.pem", "proxy-cert-3.pem"),
                         ("ca-cert.pem", "proxy-cert-2.pem")):
        sh.ok(f"openssl x509 -in certs/cluster1/{ours} -text -noout > ours.txt")
        sh.ok(f"openssl x509 -in ./{theirs} -text -noout > theirs.txt")
        assert sh.ok("diff -s ours.txt theirs.txt") == \
            "Files ours.txt and theirs.txt are identical\n"
    assert sh.ok("openssl verify -CAfile <(cat certs/cluster1/ca-cert.pem "
                 "certs/cluster1/root-cert.pem) ./proxy-cert-1.pem") == "./proxy-cert-1.pem: OK\n"
    sh.ok("kubectl delete ns foo istio-system")
