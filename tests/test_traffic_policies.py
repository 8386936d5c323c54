"""VirtualService and DestinationRule policies on real Envoy, seen from inside a client pod.

Fault injection (delay and abort, percentage, scoped by match), timeouts, retries, and
outlier detection with minHealthPercent, each checked against what Istio documents.
"""

from __future__ import annotations

import textwrap

import pytest

import lablib
from lablib import traffic
from lablib.proxyconfig import stats

pytestmark = pytest.mark.envoy
NS = "policies"
HTTPBIN = "http://httpbin:8000"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("policies-state")))
        patch.setenv("LAB_MESH", "policies")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply("samples/httpbin/httpbin.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace=NS)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture(scope="module")
def sleep_pod(mesh):
    return mesh.pod_name({"app": "sleep"}, NS)


@pytest.fixture(autouse=True)
def no_rules(mesh):
    yield
    mesh.delete([{"apiVersion": "networking.istio.io/v1beta1", "kind": kind,
                  "metadata": {"name": "httpbin", "namespace": NS}}
                 for kind in ("VirtualService", "DestinationRule")])


def httpbin_vs(http: str) -> str:
    return textwrap.dedent("""\
        apiVersion: networking.istio.io/v1beta1
        kind: VirtualService
        metadata: {name: httpbin, namespace: policies}
        spec:
          hosts: [httpbin]
          http:
        """) + textwrap.indent(textwrap.dedent(http), "  ")


def from_sleep(mesh, pod, path, n, **kwargs):
    return traffic.send(mesh, HTTPBIN + path, n=n, from_pod=pod, namespace=NS, **kwargs)


def test_delay_is_scoped_by_its_match(mesh, sleep_pod):
    mesh.apply(httpbin_vs("""\
        - match: [{headers: {x-test: {exact: slow}}}]
          fault: {delay: {percentage: {value: 100}, fixedDelay: 0.8s}}
          route: [{destination: {host: httpbin}}]
        - route: [{destination: {host: httpbin}}]
        """))
    slow = from_sleep(mesh, sleep_pod, "/get", 4, headers={"x-test": "slow"})
    fast = from_sleep(mesh, sleep_pod, "/get", 4)
    assert (slow.status == 200).all() and (fast.status == 200).all()
    assert slow.latency_ms.min() >= 750
    assert fast.latency_ms.median() < 300


def test_abort_percentage_is_a_binomial_share(mesh, sleep_pod):
    mesh.apply(httpbin_vs("""\
        - fault: {abort: {percentage: {value: 30}, httpStatus: 418}}
          route: [{destination: {host: httpbin}}]
        """))
    frame = from_sleep(mesh, sleep_pod, "/get", 200)
    frame["code"] = frame.status.astype(str)
    traffic.check_shares(frame, {"418": 0.3, "200": 0.7}, column="code")


def test_timeout_answers_504_on_time_and_is_not_retried(mesh, sleep_pod):
    mesh.apply(httpbin_vs("""\
        - timeout: 0.5s
          route: [{destination: {host: httpbin}}]
        """))
    frame = from_sleep(mesh, sleep_pod, "/delay/3", 3)
    assert (frame.status == 504).all()
    assert frame.latency_ms.between(450, 1500).all()  # one try of 0.5 s, not three


def test_retries_retry_the_failures_they_name(mesh, sleep_pod):
    mesh.apply(httpbin_vs("""\
        - retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
          route: [{destination: {host: httpbin}}]
        """))
    counter = f"cluster.outbound|8000||httpbin.{NS}.svc.cluster.local.upstream_rq_retry"

    def retries() -> int:
        table = stats(mesh, sleep_pod, NS, counter)
        found = table[table.stat == counter].value
        return int(found.iloc[0]) if len(found) else 0

    before = retries()
    frame = from_sleep(mesh, sleep_pod, "/status/503", 5)
    assert (frame.status == 503).all()
    assert retries() - before == 5 * 3


MIXED = """\
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: policies}
spec:
  selector: {app: mixed}
  ports: [{name: http, port: 8000, targetPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mixed-good, namespace: policies}
spec:
  selector: {matchLabels: {app: mixed, health: good}}
  template:
    metadata: {labels: {app: mixed, health: good}}
    spec:
      containers: [{name: httpbin, image: docker.io/kong/httpbin, ports: [{containerPort: 80}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mixed-bad, namespace: policies}
spec:
  selector: {matchLabels: {app: mixed, health: bad}}
  template:
    metadata: {labels: {app: mixed, health: bad}}
    spec:
      containers:
      - name: echo
        image: docker.io/istio/tcp-echo-server:1.2
        args: ["80", "not-http"]
        ports: [{containerPort: 80}]
"""


def outlier_rule(min_health_percent: int) -> dict:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "mixed", "namespace": NS},
            "spec": {"host": "mixed", "trafficPolicy": {
                "connectionPool": {"http": {"maxRequestsPerConnection": 1}},
                "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                                     "baseEjectionTime": "3m", "maxEjectionPercent": 100,
                                     "minHealthPercent": min_health_percent}}}}


@pytest.mark.parametrize("min_health, ejected", [(0, True), (60, False)])
def test_outlier_detection_ejects_a_failing_endpoint_unless_too_few_stay(
        mesh, sleep_pod, min_health, ejected):
    """One of two endpoints speaks no HTTP. Ejecting it leaves 50% healthy: with
    minHealthPercent 0 traffic then avoids it; with 60, Envoy's panic mode ignores ejection."""
    mesh.apply(MIXED)
    mesh.apply(outlier_rule(min_health))
    try:
        traffic.send(mesh, "http://mixed:8000/get", n=20, from_pod=sleep_pod, namespace=NS)
        frame = traffic.send(mesh, "http://mixed:8000/get", n=60, from_pod=sleep_pod,
                             namespace=NS)
        failed = float((frame.status != 200).mean())
        if ejected:
            assert failed <= 0.1, frame.status.value_counts()
        else:
            assert failed >= 0.2, frame.status.value_counts()
    finally:
        mesh.delete(outlier_rule(min_health))
        mesh.delete(MIXED)


@pytest.mark.parametrize("http, named", [
    ("""\
     - fault: {delay: {percentage: {value: 100}, fixedDelay: -1s}}
       route: [{destination: {host: httpbin}}]
     """, "fixedDelay"),
    ("""\
     - fault: {abort: {percentage: {value: 120}, httpStatus: 500}}
       route: [{destination: {host: httpbin}}]
     """, "percentage"),
])
def test_bad_fault_values_are_refused(mesh, sleep_pod, http, named):
    with pytest.raises(lablib.ConfigError) as refused:
        mesh.apply(httpbin_vs(http))
    assert named in str(refused.value)
    assert (from_sleep(mesh, sleep_pod, "/get", 3).status == 200).all()


def test_a_breaker_threshold_of_zero_is_refused(mesh, sleep_pod):
    rule = {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "httpbin", "namespace": NS},
            "spec": {"host": "httpbin",
                     "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 0}}}}}
    with pytest.raises(lablib.ConfigError, match="maxConnections"):
        mesh.apply(rule)
    assert (from_sleep(mesh, sleep_pod, "/get", 3).status == 200).all()
