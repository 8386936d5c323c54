"""AuthorizationPolicy and RequestAuthentication on real Envoy: 403 `RBAC: access denied`
from the server's sidecar, TCP connections closed by the network RBAC filter, client IPs
from X-Forwarded-For at the gateway (numTrustedProxies), principals from the client's mTLS
certificate, dry-run counted but not enforced, and JWTs verified by jwt_authn (401 for a bad
token, claims to RBAC)."""

from __future__ import annotations

import httpx
import pytest

import lablib
from lablib import access, tcp, tokens

pytestmark = pytest.mark.envoy
NS = "authz-test"
PLAIN = "legacy-authz"
URL = f"http://httpbin.{NS}:8000"
ISSUER = tokens.Issuer("testing@secure.istio.io")
TRUSTED_PROXIES = "meshConfig.defaultConfig.gatewayTopology.numTrustedProxies"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("authz-state")))
        patch.setenv("LAB_MESH", "authz")
        mesh = lablib.connect("local")
        try:
            # One proxy (a load balancer, say) in front of the gateway appends to XFF.
            mesh.install(values={TRUSTED_PROXIES: "1"})
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.create_namespace(PLAIN)
            mesh.apply("samples/httpbin/httpbin.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace=PLAIN)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture(autouse=True)
def no_policies(mesh):
    yield
    mesh.delete([{"apiVersion": "security.istio.io/v1", "kind": kind,
                  "metadata": {"name": name, "namespace": NS}}
                 for kind, name in [("AuthorizationPolicy", "deny-all"),
                                    ("AuthorizationPolicy", "allow-get"),
                                    ("AuthorizationPolicy", "require-jwt"),
                                    ("AuthorizationPolicy", "tcp-policy"),
                                    ("RequestAuthentication", "jwt")]])


def policy(name: str, spec: dict, annotations: dict | None = None) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
            "spec": spec}


def curl(mesh, namespace: str, path: str = "/headers", *, method: str = "GET",
         headers: dict | None = None) -> tuple[int, str]:
    """(status code, body) of one request from the sleep pod of `namespace`."""
    return access.request(mesh, f"{namespace}/sleep", URL + path, method=method, headers=headers,
                       body=True)


def status(mesh, namespace: str, path: str = "/headers", expected: int = 200, **options) -> int:
    """The status, once the policies just applied are in force (pooled connections drain)."""
    return access.settle(lambda: curl(mesh, namespace, path, **options)[0], expected)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_deny_all_then_allow_get_from_one_service_account(mesh):
    assert status(mesh, NS) == 200
    mesh.apply(policy("deny-all", {}))
    assert status(mesh, NS, expected=403) == 403
    assert curl(mesh, NS) == (403, "RBAC: access denied")
    mesh.apply(policy("allow-get", {"rules": [{
        "from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/sleep"]}}],
        "to": [{"operation": {"methods": ["GET"], "paths": ["/headers", "/status/*"]}}]}]}))
    assert status(mesh, NS) == 200
    assert curl(mesh, NS, "/status/200")[0] == 200
    assert curl(mesh, NS, "/ip")[0] == 403
    assert curl(mesh, NS, method="POST")[0] == 403
    # A client without a sidecar presents no certificate, so it has no principal.
    assert curl(mesh, PLAIN)[0] == 403


def test_dry_run_is_counted_not_enforced(mesh):
    mesh.apply(policy("deny-all", {}, {"istio.io/dry-run": "true"}))
    pod = mesh.pod_name({"app": "httpbin"}, NS)

    def shadow_denied() -> int:
        stats = mesh.proxy_admin(pod, NS, "stats?filter=istio_dry_run_allow_.shadow_denied")
        return sum(int(line.rpartition(" ")[2]) for line in stats.splitlines() if line.strip())

    before = shadow_denied()
    # Each request gets through, and once the shadow rules are in force it is counted.
    assert access.settle(lambda: (curl(mesh, NS)[0], shadow_denied() > before),
                         (200, True)) == (200, True)


def test_jwt_is_verified_and_its_principal_authorized(mesh):
    mesh.apply({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                "metadata": {"name": "jwt", "namespace": NS},
                "spec": {"selector": {"matchLabels": {"app": "httpbin"}},
                         "jwtRules": [{"issuer": ISSUER.name, "jwks": ISSUER.jwks,
                                       "outputClaimToHeaders": [
                                           {"header": "x-jwt-groups", "claim": "groups"}]}]}})
    good = bearer(ISSUER.token(groups=["group1"]))
    assert status(mesh, NS, headers=bearer("not.a.token"), expected=401) == 401
    assert curl(mesh, NS)[0] == 200  # no token: authentication passes
    expired = bearer(ISSUER.token(expires_in=-300))
    assert curl(mesh, NS, headers=expired) == (401, "Jwt is expired")
    code, body = curl(mesh, NS, headers=good)
    assert code == 200 and "X-Jwt-Groups" in body and "Authorization" not in body
    mesh.apply(policy("require-jwt", {"rules": [{
        "from": [{"source": {"requestPrincipals": [ISSUER.principal()]}}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}]}]}))
    assert status(mesh, NS, expected=403) == 403
    assert curl(mesh, NS, headers=good)[0] == 200
    assert curl(mesh, NS, headers=bearer(ISSUER.token(groups=["group2"])))[0] == 403


def tcp_answers(mesh, n: int = 5) -> set[str]:
    """What n connections through the gateway's TCP port to tcp-echo got back."""
    host, port = mesh.ingress_address("tcp")
    return set(tcp.send_tcp(host, port, n=n, timeout=3)["version"])


def test_tcp_policies_follow_istios_rules_for_http_fields(mesh):
    mesh.apply("samples/tcp-echo/tcp-echo-services.yaml", namespace=NS)
    mesh.apply("samples/tcp-echo/tcp-echo-all-v1.yaml", namespace=NS)
    mesh.wait_ready(NS)
    assert access.settle(lambda: tcp_answers(mesh), {"one"}) == {"one"}
    selector = {"matchLabels": {"app": "tcp-echo"}}
    mesh.apply(policy("tcp-policy", {"selector": selector, "action": "ALLOW", "rules": [
        {"to": [{"operation": {"ports": ["9000", "9001"]}}]}]}))
    assert access.settle(lambda: tcp_answers(mesh), {"one"}) == {"one"}
    # An HTTP field in an ALLOW rule: the rule is left out on TCP, nothing is allowed.
    mesh.apply(policy("tcp-policy", {"selector": selector, "action": "ALLOW", "rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]}))
    assert access.settle(lambda: tcp_answers(mesh), {"error"}) == {"error"}
    # The same in a DENY rule: the HTTP field is left out, so port 9000 is denied outright.
    mesh.apply(policy("tcp-policy", {"selector": selector, "action": "DENY", "rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]}))
    assert access.settle(lambda: tcp_answers(mesh), {"error"}) == {"error"}
    mesh.delete(policy("tcp-policy", {}))
    assert access.settle(lambda: tcp_answers(mesh), {"one"}) == {"one"}


def test_gateway_denies_client_ips_from_x_forwarded_for(mesh):
    mesh.apply([
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
         "metadata": {"name": "httpbin-gateway", "namespace": NS},
         "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
             {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
              "hosts": ["httpbin.example.com"]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "httpbin", "namespace": NS},
         "spec": {"hosts": ["httpbin.example.com"], "gateways": ["httpbin-gateway"],
                  "http": [{"route": [{"destination": {"host": "httpbin",
                                                       "port": {"number": 8000}}}]}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "ingress-deny-ip", "namespace": "istio-system"},
         "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY",
                  "rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}]}},
    ])
    host, port = mesh.ingress_address()

    def status(forwarded_for: str | None) -> int:
        headers = {"Host": "httpbin.example.com"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        return httpx.get(f"http://{host}:{port}/headers", headers=headers,
                         timeout=10).status_code

    try:
        assert access.settle(lambda: status("203.0.113.7"), 403) == 403
        assert status("198.51.100.1") == 200
        assert status(None) == 200  # the direct peer, 127.0.0.1, is no client to deny
        # Only the last numTrustedProxies (1) hop is trusted: an address the client wrote
        # further left is not its address.
        assert status("203.0.113.7, 198.51.100.1") == 200
    finally:
        mesh.delete({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "ingress-deny-ip", "namespace": "istio-system"}})
