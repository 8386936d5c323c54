"""The troubleshooting analyzers (config/analyze_troubleshooting.py): Istio's codes and
message texts, and the kit's LAB070x."""

from __future__ import annotations

from test_config_analyze import GATEWAY, NS, bookinfo, codes, find

from lablib.config import analyze

REVIEWS_ORDER_WRONG = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
"""

DUPLICATE_MATCH = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{headers: {end-user: {exact: jason}}}, {uri: {prefix: /x}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""


def test_a_rule_after_the_catch_all_is_ist0130():
    found = find(bookinfo(REVIEWS_ORDER_WRONG), "IST0130")
    assert found.severity == "Warning"
    assert found.message == ("VirtualService rule #1 not used (route without matches defined "
                             "before).")
    assert found.field == "spec.http[1]"


def test_a_repeated_match_is_ist0131_and_the_right_order_is_clean():
    found = find(bookinfo(DUPLICATE_MATCH), "IST0131")
    assert found.severity == "Info"
    assert found.message == ("VirtualService rule #1 match #0 is not used (duplicate/"
                             "overlapping match in rule #0).")
    assert "IST0130" not in codes(bookinfo(DUPLICATE_MATCH))


def test_a_host_the_gateway_does_not_serve_is_ist0132():
    restricted = GATEWAY.replace('hosts: ["*"]\n---', "hosts: [bookinfo.example.com]\n---")
    mismatch = restricted.replace('  hosts: ["*"]\n  gateways', "  hosts: [bookinfo.example.org]"
                                  "\n  gateways")
    found = find(bookinfo(mismatch), "IST0132")
    assert found.message == (f"one or more host [bookinfo.example.org] defined in "
                             f"VirtualService {NS}/bookinfo not found in Gateway "
                             f"{NS}/bookinfo-gateway.")
    assert "IST0132" not in codes(bookinfo(mismatch.replace(".org", ".com")))
    assert "IST0132" not in codes(bookinfo())  # "*" on both sides


def test_an_unnamed_port_is_ist0118_and_a_named_one_is_not():
    service = """
apiVersion: v1
kind: Service
metadata: {name: legacy}
spec:
  ports: [{port: 80, name: web, targetPort: 8080}, {port: 81, name: http-x}]
  selector: {app: legacy}
"""
    found = find(bookinfo(service), "IST0118")
    assert found.severity == "Info"
    assert found.message == ("Port name web (port: 80, targetPort: 8080) doesn't follow the "
                             "naming convention of Istio port.")


def test_an_unknown_istio_annotation_is_ist0108():
    deployment = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: odd}
spec:
  selector: {matchLabels: {app: odd}}
  template:
    metadata:
      labels: {app: odd}
      annotations: {sidecar.istio.io/injet: "false", sidecar.istio.io/inject: "false",
                    example.com/anything: x}
    spec: {containers: [{name: odd, image: docker.io/curlimages/curl}]}
"""
    found = find(bookinfo(deployment), "IST0108")
    assert found.message == "Unknown annotation: sidecar.istio.io/injet"
    assert found.field == "spec.template.metadata.annotations.sidecar.istio.io/injet"


def test_tls_disable_toward_a_strict_workload_is_lab0701():
    strict = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
"""
    disable = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings-plain}
spec:
  host: ratings
  trafficPolicy: {tls: {mode: DISABLE}}
"""
    found = find(bookinfo(strict, disable), "LAB0701")
    assert found.severity == "Warning" and "ratings" in found.message
    assert "LAB0701" not in codes(bookinfo(strict.replace("STRICT", "PERMISSIVE"), disable))


def test_a_timeout_below_the_per_try_timeout_is_lab0702():
    service = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - timeout: 1s
    retries: {attempts: 2, perTryTimeout: 3s}
    route: [{destination: {host: ratings}}]
"""
    found = find(bookinfo(service), "LAB0702")
    assert found.field == "spec.http[0].timeout"
    assert "LAB0702" not in codes(bookinfo(service.replace("timeout: 1s", "timeout: 10s")))


def test_none_of_them_blocks_an_apply():
    findings = analyze(bookinfo(REVIEWS_ORDER_WRONG, DUPLICATE_MATCH.replace("reviews}",
                                                                             "reviews2}")))
    assert all(d.severity != "Error" for d in findings if d.code.startswith(("IST013",
                                                                             "LAB07")))
