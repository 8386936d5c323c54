"""istioctl analyze on AuthorizationPolicies: HTTP-only fields toward TCP ports (LAB0520),
identities where mTLS is off (LAB0521), and policies nothing enforces (LAB0522)."""

from __future__ import annotations

from test_config_analyze import NS, bookinfo, codes, find

TCP_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: ratings-tcp}
spec:
  ports: [{port: 9000, name: tcp}]
  selector: {app: ratings}
"""

GET_RATINGS = ("{selector: {matchLabels: {app: ratings}}, "
               "rules: [{to: [{operation: {methods: [GET]}}]}]}")


def policy(spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings}}
spec: {spec}
"""


def test_http_fields_toward_a_tcp_port_are_warned():
    store = bookinfo(TCP_SERVICE, policy(GET_RATINGS))
    found = find(store, "LAB0520")
    assert found.field == "spec.rules[0]" and "9000" in found.message
    assert "allows nothing" in found.message


def test_http_fields_on_http_ports_only_are_fine():
    store = bookinfo(policy(GET_RATINGS))
    assert "LAB0520" not in codes(store)


def test_principals_where_mtls_is_disabled_are_warned():
    disable = f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {NS}}}
spec: {{mtls: {{mode: DISABLE}}}}
"""
    store = bookinfo(disable, policy(
        '{rules: [{from: [{source: {principals: ["cluster.local/ns/x/sa/y"]}}]}]}'))
    assert find(store, "LAB0521").field == "spec.rules[0].from"


def test_policy_on_workloads_without_sidecar_is_warned():
    store = bookinfo(policy("{selector: {matchLabels: {app: ratings}}}"), injected=False)
    assert "no sidecar" in find(store, "LAB0522").message
