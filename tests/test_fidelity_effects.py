"""The effect of each field the fidelity ledger calls translated and no older test shows,
through a proxy's generated config and the simulator (lablib/controlplane/simulate.py)."""

from __future__ import annotations

import pytest
from test_translation import GATEWAY, NS, SIDECAR, SUBSETS, snapshot_for

from lablib.config.loader import load
from lablib.config.meshconfig import mesh_config
from lablib.config.store import ConfigStore
from lablib.controlplane.simulate import Call, ErrNoRoute, simulate

REVIEWS = f"reviews.{NS}.svc.cluster.local"


def reviews_rules(rules: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{rules}
"""


def subset_of(snap, call: Call) -> str:
    return simulate(snap, call).cluster.split("|")[2]


def test_kind_and_name_identify_the_resource():
    store = ConfigStore.with_namespaces([NS]).with_applied(load(reviews_rules(
        "  - route: [{destination: {host: reviews}}]"), namespace=NS))
    assert store.get("VirtualService", NS, "reviews") is not None


def test_every_string_match_kind_selects_its_requests():
    vs = reviews_rules("""  - match: [{uri: {exact: /exact}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {regex: "/re+gex"}, method: {exact: POST}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /CASE}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{queryParams: {user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match:
    - {withoutHeaders: {x-skip: {exact: "1"}}, authority: {prefix: reviews},
       scheme: {exact: http}}
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]""")
    snap = snapshot_for(SIDECAR, SUBSETS, vs)
    http = {":scheme": "http"}
    assert subset_of(snap, Call(15001, "reviews:9080", "/exact")) == "v1"
    assert subset_of(snap, Call(15001, "reviews:9080", "/reeegex", "POST")) == "v2"
    assert subset_of(snap, Call(15001, "reviews:9080", "/reeegex", "GET", http)) == "v3"
    assert subset_of(snap, Call(15001, "reviews:9080", "/case/x")) == "v3"
    assert subset_of(snap, Call(15001, "reviews:9080", "/p?user=jason")) == "v2"
    assert subset_of(snap, Call(15001, "reviews:9080", "/p", headers={"x-skip": "1"})) == "v1"
    assert subset_of(snap, Call(15001, "reviews:9080", "/p", headers=http)) == "v3"


def test_route_names_are_envoys_route_names():
    vs = reviews_rules("""  - name: to-v1
    route: [{destination: {host: reviews, subset: v1}}]""")
    assert simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080")).route \
        == "to-v1"


def test_match_gateways_scope_a_rule():
    vs = reviews_rules("""  - match: [{gateways: [some-gateway]}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{gateways: [mesh]}]
    route: [{destination: {host: reviews, subset: v3}}]""").replace(
        "hosts: [reviews]", "hosts: [reviews]\n  gateways: [mesh, some-gateway]")
    assert subset_of(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080")) == "v3"


@pytest.mark.parametrize("code, envoy", [(None, "MOVED_PERMANENTLY"), (307, "TEMPORARY_REDIRECT")])
def test_redirect_answers_with_location_and_code(code, envoy):
    extra = f", redirectCode: {code}" if code else ""
    vs = reviews_rules(f"""  - redirect: {{uri: /v1/reviews, authority: new.example{extra}}}""")
    result = simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080", "/old"))
    assert result.redirect == {"response_code": envoy, "path_redirect": "/v1/reviews",
                               "host_redirect": "new.example"}


def test_direct_response_answers_without_an_upstream():
    vs = reviews_rules("""  - directResponse: {status: 418, body: {string: teapot}}""")
    result = simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080"))
    assert result.direct_status == 418 and not result.clusters
    assert result.envoy_route["direct_response"]["body"] == {"inline_string": "teapot"}


def test_rewrite_changes_path_and_host():
    vs = reviews_rules("""  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: reviews.internal}
    route: [{destination: {host: reviews, subset: v1}}]""")
    route = simulate(snapshot_for(SIDECAR, SUBSETS, vs),
                     Call(15001, "reviews:9080", "/old/x")).envoy_route["route"]
    assert route["prefix_rewrite"] == "/new"
    assert route["host_rewrite_literal"] == "reviews.internal"


def test_fault_percentages_both_spellings():
    vs = reviews_rules("""  - match: [{uri: {prefix: /old}}]
    fault:
      delay: {percent: 30, fixedDelay: 1s}
      abort: {percentage: {value: 12.5}, httpStatus: 503}
    route: [{destination: {host: reviews, subset: v1}}]""")
    call = Call(15001, "reviews:9080", "/old")
    fault = simulate(snapshot_for(SIDECAR, SUBSETS, vs), call).fault
    assert fault["delay"]["percentage"] == {"numerator": 30, "denominator": "HUNDRED"}
    assert fault["abort"]["percentage"] == {"numerator": 125000, "denominator": "MILLION"}
    assert fault["abort"]["http_status"] == 503


def test_rule_headers_set_add_and_remove():
    vs = reviews_rules("""  - headers:
      request: {set: {x-set: "1"}, add: {x-add: "2"}, remove: [x-gone]}
      response: {remove: [server]}
    route: [{destination: {host: reviews, subset: v1}}]""")
    route = simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080")).envoy_route
    added = {h["header"]["key"]: h["append_action"] for h in route["request_headers_to_add"]}
    assert added == {"x-set": "OVERWRITE_IF_EXISTS_OR_ADD", "x-add": "APPEND_IF_EXISTS_OR_ADD"}
    assert route["request_headers_to_remove"] == ["x-gone"]
    assert route["response_headers_to_remove"] == ["server"]


def test_tls_passthrough_routes_by_sni_at_the_gateway():
    tls = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: pass}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass}
spec:
  hosts: ["reviews.example"]
  gateways: [pass]
  tls:
  - match: [{port: 31400, sniHosts: [reviews.example]}]
    route: [{destination: {host: reviews, port: {number: 9080}, subset: v2}}]
"""
    snap = snapshot_for(GATEWAY, SUBSETS, tls)
    listener = next(lis for lis in snap.listeners.values()
                    if lis["address"]["socket_address"]["port_value"] == 31400)
    chains = {tuple(c.get("filter_chain_match", {}).get("server_names", [])):
              c["filters"][0]["typed_config"]["cluster"] for c in listener["filter_chains"]}
    assert chains[("reviews.example",)] == f"outbound|9080|v2|{REVIEWS}"


def test_simple_load_balancer_becomes_the_clusters_lb_policy():
    rule = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  trafficPolicy:\n"
                           "    loadBalancer: {simple: LEAST_REQUEST}\n")
    snap = snapshot_for(SIDECAR, rule)
    assert snap.clusters[f"outbound|9080|v1|{REVIEWS}"]["lb_policy"] == "LEAST_REQUEST"


def test_outlier_gateway_errors_are_counted():
    rule = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  trafficPolicy:\n"
                           "    outlierDetection: {consecutiveGatewayErrors: 3, interval: 1s}\n")
    outlier = snapshot_for(SIDECAR, rule).clusters[f"outbound|9080||{REVIEWS}"][
        "outlier_detection"]
    assert outlier["consecutive_gateway_failure"] == 3
    assert outlier["enforcing_consecutive_gateway_failure"] == 100


def test_an_unrouted_call_still_fails_by_name():
    vs = reviews_rules("""  - match: [{uri: {exact: /only}}]
    route: [{destination: {host: reviews, subset: v1}}]""")
    with pytest.raises(ErrNoRoute):
        simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080", "/other"))


def test_enable_auto_mtls_false_sends_plaintext_unless_a_rule_says_istio_mutual():
    off = mesh_config("default", {"meshConfig.enableAutoMtls": "false"})
    cluster = f"outbound|9080|v1|{REVIEWS}"
    auto = snapshot_for(SIDECAR, SUBSETS, mtls=True).clusters[cluster]
    assert "transport_socket_matches" in auto
    plain = snapshot_for(SIDECAR, SUBSETS, mtls=True, mesh_config=off).clusters[cluster]
    assert "transport_socket_matches" not in plain and "transport_socket" not in plain
    explicit = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  trafficPolicy:\n"
                               "    tls: {mode: ISTIO_MUTUAL}\n")
    ruled = snapshot_for(SIDECAR, explicit, mtls=True, mesh_config=off).clusters[cluster]
    assert ruled["transport_socket"]["name"] == "envoy.transport_sockets.tls"


def test_jwt_rule_fields_become_the_providers_fields(monkeypatch):
    from lablib.controlplane import jwt

    fetched = []
    monkeypatch.setattr(jwt, "fetch_jwks", lambda uri, timeout: fetched.append(
        (uri, timeout)) or '{"keys": []}')
    found = jwt.provider({
        "issuer": "testing@secure.istio.io", "jwksUri": "http://127.0.0.1:1/jwks.json",
        "timeout": "2s", "fromParams": ["token"], "fromCookies": ["session"],
        "outputPayloadToHeader": "x-jwt-payload", "forwardOriginalToken": True,
        "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}]})
    assert fetched == [("http://127.0.0.1:1/jwks.json", 2.0)]
    assert found["from_params"] == ["token"] and found["from_cookies"] == ["session"]
    assert found["forward_payload_header"] == "x-jwt-payload" and found["forward"] is True
    assert found["claim_to_headers"] == [{"header_name": "x-user", "claim_name": "sub"}]
    assert jwt.provider({"issuer": "i", "jwks": '{"keys": []}'})["forward"] is False


def test_a_service_entry_endpoint_without_ports_takes_the_target_port():
    from test_egress import SLEEP_PROXY, endpoints, snapshot

    entry = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 41003}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""
    snap = snapshot(SLEEP_PROXY, entry)
    assert endpoints(snap, "outbound|80||legacy.example.com") == [41003]
