"""AuthorizationPolicy and RequestAuthentication translation, by simulated requests through
the RBAC and jwt_authn filters of a sidecar's inbound listener and of a gateway."""

from __future__ import annotations

import pytest
from test_translation import GATEWAY, NS, SIDECAR, snapshot_for

from lablib import tokens
from lablib.config.loader import load
from lablib.controlplane.simulate_authz import Request, authorize
from lablib.errors import ConfigError

PRODUCTPAGE = 20010  # the productpage pod's inbound listener (containerPort 9080)
SLEEP = f"spiffe://cluster.local/ns/{NS}/sa/sleep"
OTHER = "spiffe://cluster.local/ns/other/sa/curl"
HTTP_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"""


def policy(spec: str, name: str = "p", namespace: str = NS, annotations: str = "") -> str:
    extra = f", annotations: {annotations}" if annotations else ""
    meta = f"{{name: {name}, namespace: {namespace}{extra}}}"
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {meta}
spec: {spec}
"""


def call(*docs: str, **request) -> int | str:
    snap = snapshot_for(SIDECAR, *docs, mtls=True)
    return authorize(snap, Request(PRODUCTPAGE, **request)).status


def test_no_policy_allows_everything():
    assert call(peer=SLEEP) == 200
    assert call() == 200


def test_empty_spec_denies_all_and_rules_of_empty_rule_allow_all():
    assert call(policy("{}"), peer=SLEEP) == 403
    assert call(policy("{}"), policy("{rules: [{}]}", name="all"), peer=SLEEP) == 200


def test_denied_request_gets_rbac_body():
    snap = snapshot_for(SIDECAR, policy("{}"), mtls=True)
    decision = authorize(snap, Request(PRODUCTPAGE))
    assert (decision.status, decision.body) == (403, "RBAC: access denied")


def test_allow_by_principal_method_and_path():
    allow = policy(f"""{{action: ALLOW, rules: [{{
        from: [{{source: {{principals: ["cluster.local/ns/{NS}/sa/sleep"]}}}}],
        to: [{{operation: {{methods: [GET], paths: ["/api/*", "/health"]}}}}]}}]}}""")
    assert call(allow, peer=SLEEP, path="/api/v1/products") == 200
    assert call(allow, peer=SLEEP, path="/health") == 200
    assert call(allow, peer=SLEEP, path="/health?x=1") == 200
    assert call(allow, peer=SLEEP, path="/admin") == 403
    assert call(allow, peer=SLEEP, method="POST", path="/api/v1") == 403
    assert call(allow, peer=OTHER, path="/api/v1") == 403
    assert call(allow, path="/api/v1") == 403  # plaintext: no principal


def test_deny_wins_over_allow_and_not_fields_invert():
    allow_all = policy("{rules: [{}]}", name="all")
    deny = policy("""{action: DENY, rules: [{
        from: [{source: {notNamespaces: [bookinfo-test]}}]}]}""", name="deny")
    assert call(allow_all, deny, peer=SLEEP) == 200
    assert call(allow_all, deny, peer=OTHER) == 403
    assert call(allow_all, deny) == 403  # no identity: not in bookinfo-test either


def test_wildcards_in_principals_hosts_and_paths():
    allow = policy("""{rules: [{from: [{source: {principals: ["*/sa/sleep"]}}],
        to: [{operation: {hosts: ["*.example.com"], notPaths: ["*/private"]}}]}]}""")
    assert call(allow, peer=SLEEP, authority="Shop.Example.com", path="/x") == 200
    assert call(allow, peer=SLEEP, authority="shop.example.org") == 403
    assert call(allow, peer=SLEEP, authority="a.example.com", path="/my/private") == 403
    assert call(allow, peer=OTHER, authority="a.example.com") == 403


def test_when_headers_and_ports():
    allow = policy("""{rules: [{to: [{operation: {ports: ["9080"]}}],
        when: [{key: "request.headers[x-token]", values: ["admin", "op*"]}]}]}""")
    assert call(allow, headers={"x-token": "admin"}) == 200
    assert call(allow, headers={"x-token": "user,operator"}) == 200
    assert call(allow, headers={"x-token": "user"}) == 403
    wrong_port = policy("""{rules: [{to: [{operation: {ports: ["8080"]}}]}]}""")
    assert call(wrong_port) == 403


def test_ip_blocks_and_remote_ip_blocks():
    allow = policy("""{rules: [{from: [{source: {ipBlocks: ["127.0.0.0/8"],
                                               notRemoteIpBlocks: ["10.0.0.0/8"]}}]}]}""")
    assert call(allow) == 200
    assert call(allow, remote_ip="10.1.2.3") == 403
    assert call(allow, source_ip="192.168.1.5") == 403


def test_selector_namespace_and_root_namespace_scope():
    other_app = policy("{selector: {matchLabels: {app: reviews}}}", name="reviews-only")
    assert call(other_app) == 200
    mine = policy("{selector: {matchLabels: {app: productpage}}}", name="pp")
    assert call(mine) == 403
    root_selector = policy("{selector: {matchLabels: {app: productpage}}}",
                           namespace="istio-system")
    assert call(root_selector) == 403
    mesh_wide = policy("{}", namespace="istio-system")
    assert call(mesh_wide) == 403


def test_audit_never_blocks_and_dry_run_only_counts():
    assert call(policy("{action: AUDIT, rules: [{}]}")) == 200
    snap = snapshot_for(SIDECAR, policy("{}", annotations='{"istio.io/dry-run": "true"}'),
                        mtls=True)
    decision = authorize(snap, Request(PRODUCTPAGE))
    assert decision.status == 200
    assert decision.shadow == {"istio_dry_run_allow_": "denied"}


ISSUER = tokens.Issuer("testing@secure.istio.io")


def request_authentication(extra: str = "") -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  jwtRules:
  - issuer: {ISSUER.name}
    jwks: '{ISSUER.jwks}'
{extra}"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_jwt_invalid_is_401_missing_passes():
    ra = request_authentication()
    assert call(ra) == 200
    assert call(ra, headers=bearer(ISSUER.token())) == 200
    snap = snapshot_for(SIDECAR, ra, mtls=True)
    expired = authorize(snap, Request(PRODUCTPAGE, headers=bearer(ISSUER.token(expires_in=-300))))
    assert (expired.status, expired.body) == (401, "Jwt is expired")
    forged = tokens.Issuer(ISSUER.name, kid=ISSUER.kid).token()
    assert authorize(snap, Request(PRODUCTPAGE, headers=bearer(forged))).body == \
        "Jwt verification fails"


def test_request_principals_and_claims_reach_authorization():
    require = policy(f"""{{rules: [{{from: [{{source: {{
        requestPrincipals: ["{ISSUER.principal()}"]}}}}]}}]}}""")
    ra = request_authentication()
    assert call(ra, require) == 403
    assert call(ra, require, headers=bearer(ISSUER.token())) == 200
    assert call(ra, require, headers=bearer(ISSUER.token(sub="bob"))) == 403
    groups = policy("""{rules: [{when: [
        {key: "request.auth.claims[groups]", values: [group1]}]}]}""")
    assert call(ra, groups, headers=bearer(ISSUER.token(groups=["group1", "g2"]))) == 200
    assert call(ra, groups, headers=bearer(ISSUER.token(groups=["g2"]))) == 403
    nested = policy("""{rules: [{when: [
        {key: "request.auth.claims[nested][role]", values: [admin]}]}]}""")
    assert call(ra, nested, headers=bearer(ISSUER.token(nested={"role": "admin"}))) == 200
    assert call(ra, nested, headers=bearer(ISSUER.token(nested={"role": "user"}))) == 403


def test_request_principal_wildcards_split_at_any_slash():
    issuer = tokens.Issuer("https://issuer.example/realm")
    ra = request_authentication().replace(ISSUER.name, issuer.name).replace(
        ISSUER.jwks, issuer.jwks)
    for pattern, sub, status in [("https://issuer.example/realm/alice", "alice", 200),
                                 ("https://issuer.example/realm/alice", "bob", 403),
                                 ("https://issuer.example/*", "bob", 200),
                                 ("*/alice", "alice", 200), ("*/alice", "xalice", 403),
                                 ("*", "anyone", 200)]:
        allow = policy(f'{{rules: [{{from: [{{source: {{requestPrincipals: ["{pattern}"]}}}}]}}]}}')
        assert call(ra, allow, headers=bearer(issuer.token(sub=sub))) == status, (pattern, sub)


def test_jwt_audiences_and_header_location():
    ra = request_authentication("""    audiences: [bookinfo]
    fromHeaders: [{name: x-jwt, prefix: "Token "}]""")
    assert call(ra, headers={"x-jwt": "Token " + ISSUER.token(aud="bookinfo")}) == 200
    assert call(ra, headers={"x-jwt": "Token " + ISSUER.token(aud="other")}) == 401


TCP_SERVICE_POLICY = """{rules: [{to: [{operation: {methods: [GET], ports: ["9000"]}}]}]}"""


def test_http_only_fields_on_tcp_drop_allow_rules_and_narrow_deny_rules():
    from lablib.controlplane.authz import policy_rules

    [allow] = load(policy(TCP_SERVICE_POLICY))
    assert policy_rules(allow, tcp=True, port=9000) == {}
    deny_text = policy(TCP_SERVICE_POLICY.replace("{rules", "{action: DENY, rules"))
    [deny] = load(deny_text)
    rules = policy_rules(deny, tcp=True, port=9000)
    assert list(rules) == [f"ns[{NS}]-policy[p]-rule[0]"]
    assert rules[f"ns[{NS}]-policy[p]-rule[0]"]["permissions"] == [{"any": True}]


def test_gateway_denies_by_remote_ip():
    deny = policy("""{selector: {matchLabels: {istio: ingressgateway}}, action: DENY,
                      rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]}""",
                  namespace="istio-system")
    snap = snapshot_for(GATEWAY, HTTP_GATEWAY, deny)
    assert authorize(snap, Request(30080, remote_ip="203.0.113.7")).status == 403
    assert authorize(snap, Request(30080, remote_ip="198.51.100.1")).status == 200


@pytest.mark.parametrize("spec, field, code", [
    ('{rules: [{when: [{key: "request.header[x]", values: [a]}]}]}',
     "spec.rules[0].when[0].key", "LAB0501"),
    ('{rules: [{to: [{operation: {paths: ["/a/*/b"]}}]}]}',
     "spec.rules[0].to[0].operation.paths[0]", "LAB0502"),
    ('{rules: [{from: [{source: {ipBlocks: ["10.0.0.300/8"]}}]}]}',
     "spec.rules[0].from[0].source.ipBlocks[0]", "LAB0503"),
    ('{rules: [{to: [{operation: {ports: ["http"]}}]}]}',
     "spec.rules[0].to[0].operation.ports[0]", "LAB0507"),
    ("{action: CUSTOM, rules: [{}]}", "spec.provider", "LAB0505"),
    ("{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]}",
     "spec.targetRefs", "LAB0506"),
])
def test_bad_policies_get_field_level_errors(spec, field, code):
    with pytest.raises(ConfigError) as refused:
        load(policy(spec))
    found = refused.value.diagnostics
    assert [(d.code, d.field) for d in found] == [(code, field)], found


@pytest.mark.parametrize("jwks, message", [("not json", "jwks is not JSON"),
                                           ('{"keys": []}', "jwks has no keys")])
def test_bad_jwks_is_refused(jwks, message):
    with pytest.raises(ConfigError) as refused:
        load(request_authentication().replace(ISSUER.jwks, jwks))
    [found] = refused.value.diagnostics
    assert found.code == "LAB0504" and found.field == "spec.jwtRules[0].jwks"
    assert message in found.message


def test_custom_action_is_refused_until_ext_authz_exists():
    with pytest.raises(ConfigError) as refused:
        load(policy("{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}"))
    [found] = refused.value.diagnostics
    assert (found.code, found.field) == ("LAB0511", "spec.action")
    assert "LAB_BACKEND=kubernetes" in found.message


def test_gateway_trusts_as_many_forwarded_for_hops_as_mesh_config_says():
    from test_translation import GATEWAY_WORKLOAD, INGRESS_SERVICE, SIDECAR, WORKLOADS

    from lablib.config.meshconfig import mesh_config
    from lablib.config.store import ConfigStore
    from lablib.controlplane.context import PushContext
    from lablib.controlplane.snapshot import build_snapshot

    store = ConfigStore.with_namespaces([NS, "istio-system"]).with_applied(
        load(INGRESS_SERVICE + "---" + HTTP_GATEWAY))

    def hops(values: dict[str, str]) -> int | None:
        ctx = PushContext(store, (*WORKLOADS, GATEWAY_WORKLOAD), (SIDECAR, GATEWAY),
                          mesh_config=mesh_config("demo", values))
        [hcm] = build_snapshot(GATEWAY, ctx).listeners["0.0.0.0_8080"]["filter_chains"][0][
            "filters"]
        return hcm["typed_config"].get("xff_num_trusted_hops")

    assert hops({}) is None
    assert hops({"meshConfig.defaultConfig.gatewayTopology.numTrustedProxies": "2"}) == 2


def test_unreachable_jwks_uri_refuses_every_token():
    from lablib.controlplane.jwt import jwks_fetch_errors

    uri = "http://127.0.0.1:9/jwks.json"  # the discard port: nothing serves it
    ra = request_authentication().replace(f"jwks: '{ISSUER.jwks}'", f"jwksUri: {uri}")
    snap = snapshot_for(SIDECAR, ra, mtls=True)
    decision = authorize(snap, Request(PRODUCTPAGE, headers=bearer(ISSUER.token())))
    assert (decision.status, decision.body) == (
        401, "Jwks doesn't have key to match kid or alg from Jwt")
    assert uri in jwks_fetch_errors()
    assert authorize(snap, Request(PRODUCTPAGE)).status == 200  # no token: still passes


def test_tokens_from_params_and_cookies():
    ra = request_authentication("""    fromParams: [my_token]
    fromCookies: [session]""")
    expired = ISSUER.token(expires_in=-300)
    assert call(ra, path="/x?my_token=" + expired) == 401
    assert call(ra, headers={"Cookie": f"theme=dark; session={expired}"}) == 401
    assert call(ra, path="/x?my_token=" + ISSUER.token()) == 200
    # Configured locations replace the default Authorization header.
    assert call(ra, headers=bearer(expired)) == 200
