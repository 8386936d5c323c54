"""AuthorizationPolicy and RequestAuthentication on real Envoy: 403 `RBAC: access denied`
from the server's sidecar, principals from the client's mTLS certificate, dry-run counted
but not enforced, and JWTs verified by jwt_authn (401 for a bad token, claims to RBAC)."""

from __future__ import annotations

import pytest

import lablib
from lablib import access, tokens

pytestmark = pytest.mark.envoy
NS = "authz-test"
PLAIN = "legacy-authz"
URL = f"http://httpbin.{NS}:8000"
ISSUER = tokens.Issuer("testing@secure.istio.io")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("authz-state")))
        patch.setenv("LAB_MESH", "authz")
        mesh = lablib.connect("local")
        try:
            mesh.install()
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
