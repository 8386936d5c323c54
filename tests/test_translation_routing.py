"""Translation of the routing features Istio's tasks teach beyond weights and matches:
mirroring, source-selected rules, exportTo, CORS, consistent hashing, redirects and
rewrites, per-destination headers, gRPC aborts, DestinationRule scoping, gateway TLS
settings. Simulated calls through generated config (controlplane/simulate.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_translation import (
    GATEWAY,
    GATEWAY_WORKLOAD,
    INGRESS_SERVICE,
    NS,
    SERVICES,
    SIDECAR,
    SUBSETS,
    WORKLOADS,
    workload,
)

from lablib.config.loader import load
from lablib.config.store import ConfigStore
from lablib.controlplane.context import Proxy, PushContext
from lablib.controlplane.naming import node_id
from lablib.controlplane.simulate import Call, cors_preflight, simulate
from lablib.controlplane.snapshot import Snapshot, build_snapshot

REVIEWS = "reviews.bookinfo-test.svc.cluster.local"
SLEEP = Proxy(node_id("sidecar", "sleep-a", NS), "sidecar", NS,
              workload("sleep-a", {"app": "sleep"}, 20020), outbound_port=15003)
OTHER_NS = "other"
OTHER = Proxy(node_id("sidecar", "sleep-o", OTHER_NS), "sidecar", OTHER_NS,
              workload("sleep-o", {"app": "sleep"}, 20030, ns=OTHER_NS), outbound_port=15004)
PROXIES = (SIDECAR, SLEEP, OTHER, GATEWAY)


def snapshot(proxy: Proxy, *docs: str) -> Snapshot:
    resources = []
    for text in (SERVICES, INGRESS_SERVICE, *docs):
        resources += load(text, namespace=None if "namespace:" in text else NS)
    store = ConfigStore.with_namespaces([NS, OTHER_NS, "istio-system"]).with_applied(resources)
    workloads = (*WORKLOADS, SLEEP.workload, OTHER.workload, GATEWAY_WORKLOAD)
    ctx = PushContext(store, tuple(w for w in workloads if w), PROXIES)
    return build_snapshot(proxy, ctx)


def reviews_call(proxy: Proxy, path: str = "/reviews/0", **headers: str) -> Call:
    host = "reviews:9080" if proxy.namespace == NS else f"reviews.{NS}:9080"
    return Call(proxy.outbound_port, host, path, headers=headers)


def vs(http: str, extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
{extra}  http:
{http}"""


TO_V1 = """  - route:
    - destination: {host: reviews, subset: v1}
"""


# --- mirroring --------------------------------------------------------------------------


def test_mirror_with_percentage_copies_that_share_to_the_mirror_cluster():
    http = TO_V1 + """    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 50.0}
"""
    result = simulate(snapshot(SIDECAR, SUBSETS, vs(http)), reviews_call(SIDECAR))
    assert result.cluster == f"outbound|9080|v1|{REVIEWS}"
    assert result.mirrors == {f"outbound|9080|v2|{REVIEWS}": 50.0}


def test_mirror_without_a_percentage_copies_everything_and_mirror_percent_is_read():
    plain = TO_V1 + "    mirror: {host: reviews, subset: v2}\n"
    result = simulate(snapshot(SIDECAR, SUBSETS, vs(plain)), reviews_call(SIDECAR))
    assert result.mirrors == {f"outbound|9080|v2|{REVIEWS}": 100.0}
    old = plain + "    mirrorPercent: 25\n"
    result = simulate(snapshot(SIDECAR, SUBSETS, vs(old)), reviews_call(SIDECAR))
    assert result.mirrors == {f"outbound|9080|v2|{REVIEWS}": 25.0}


def test_mirrors_list_copies_to_each_destination_with_its_own_share():
    http = TO_V1 + """    mirrors:
    - destination: {host: reviews, subset: v2}
      percentage: {value: 10}
    - destination: {host: reviews, subset: v3}
"""
    result = simulate(snapshot(SIDECAR, SUBSETS, vs(http)), reviews_call(SIDECAR))
    assert result.mirrors == {f"outbound|9080|v2|{REVIEWS}": 10.0,
                              f"outbound|9080|v3|{REVIEWS}": 100.0}


# --- which proxies a rule reaches -------------------------------------------------------


SOURCE_RULES = """  - match:
    - sourceLabels: {app: sleep}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"""


def test_source_labels_route_only_the_selected_clients():
    docs = (SUBSETS, vs(SOURCE_RULES))
    assert simulate(snapshot(SLEEP, *docs), reviews_call(SLEEP)).cluster == \
        f"outbound|9080|v2|{REVIEWS}"
    productpage = snapshot(SIDECAR, *docs)
    assert simulate(productpage, reviews_call(SIDECAR)).cluster == f"outbound|9080|v1|{REVIEWS}"
    routes = [r.get("name") for vh in productpage.routes["outbound_http"]["virtual_hosts"]
              for r in vh["routes"]]
    assert f"{NS}.reviews.0.0" not in routes  # left out of productpage's config entirely


def test_source_namespace_selects_clients_by_namespace():
    http = SOURCE_RULES.replace("sourceLabels: {app: sleep}", f"sourceNamespace: {OTHER_NS}")
    docs = (SUBSETS, vs(http))
    assert simulate(snapshot(OTHER, *docs), reviews_call(OTHER)).cluster == \
        f"outbound|9080|v2|{REVIEWS}"
    assert simulate(snapshot(SLEEP, *docs), reviews_call(SLEEP)).cluster == \
        f"outbound|9080|v1|{REVIEWS}"


def gateway_vs(spec: str) -> str:
    """A Gateway `gw` for every host on port 80 and a VirtualService bound to it."""
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: ["*"]
  gateways: [gw]
{spec}"""


def test_source_labels_at_a_gateway_match_the_gateway_workload():
    bound = gateway_vs("""  http:
  - match:
    - sourceLabels: {istio: ingressgateway}
    route:
    - destination: {host: reviews, subset: v3}
""")
    result = simulate(snapshot(GATEWAY, SUBSETS, bound), Call(30080, "x.example.com"))
    assert result.cluster == f"outbound|9080|v3|{REVIEWS}"


def test_match_gateways_limits_a_match_to_the_named_gateway():
    http = """  - match:
    - gateways: [mesh]
      headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
""" + TO_V1
    snap = snapshot(SIDECAR, SUBSETS, vs(http))
    assert simulate(snap, reviews_call(SIDECAR, **{"end-user": "jason"})).cluster == \
        f"outbound|9080|v2|{REVIEWS}"


def test_export_to_dot_hides_a_virtual_service_from_other_namespaces():
    docs = (SUBSETS, vs(TO_V1, "  exportTo: [.]\n"))
    assert simulate(snapshot(SIDECAR, *docs), reviews_call(SIDECAR)).cluster == \
        f"outbound|9080|v1|{REVIEWS}"
    assert simulate(snapshot(OTHER, *docs), reviews_call(OTHER)).cluster == \
        f"outbound|9080||{REVIEWS}"
    listed = (SUBSETS, vs(TO_V1, f"  exportTo: [{OTHER_NS}]\n"))
    assert simulate(snapshot(OTHER, *listed), reviews_call(OTHER)).cluster == \
        f"outbound|9080|v1|{REVIEWS}"


def test_export_to_dot_hides_a_destination_rule_from_other_namespaces():
    rule = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  exportTo: [.]\n"
                           "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n")
    assert snapshot(SIDECAR, rule).clusters[f"outbound|9080||{REVIEWS}"]["lb_policy"] == "RANDOM"
    other = snapshot(OTHER, rule).clusters
    assert other[f"outbound|9080||{REVIEWS}"]["lb_policy"] == "LEAST_REQUEST"
    assert f"outbound|9080|v1|{REVIEWS}" not in other
    # In its own namespace a rule applies whatever its exportTo, as in Istio.
    elsewhere = rule.replace("exportTo: [.]", f"exportTo: [{OTHER_NS}]")
    assert snapshot(SIDECAR, elsewhere).clusters[f"outbound|9080||{REVIEWS}"]["lb_policy"] == \
        "RANDOM"
    assert snapshot(OTHER, elsewhere).clusters[f"outbound|9080||{REVIEWS}"]["lb_policy"] == \
        "RANDOM"


def test_a_destination_rule_with_a_workload_selector_applies_only_to_selected_clients():
    scoped = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-for-sleep}
spec:
  host: reviews
  workloadSelector: {matchLabels: {app: sleep}}
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
"""
    cluster = f"outbound|9080||{REVIEWS}"
    assert snapshot(SLEEP, scoped).clusters[cluster]["lb_policy"] == "RANDOM"
    assert snapshot(SIDECAR, scoped).clusters[cluster]["lb_policy"] == "LEAST_REQUEST"
    # The selected client prefers its own rule to the namespace's general one.
    assert snapshot(SLEEP, SUBSETS, scoped).clusters[cluster]["lb_policy"] == "RANDOM"


# --- CORS -------------------------------------------------------------------------------


CORS = TO_V1 + """    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      - regex: https://.*\\.example\\.org
      allowMethods: [POST, GET]
      allowHeaders: [X-Foo-Bar]
      exposeHeaders: [X-Expose]
      maxAge: 24h
      allowCredentials: true
"""


def test_cors_policy_answers_allowed_preflights_and_passes_others_on():
    snap = snapshot(SIDECAR, SUBSETS, vs(CORS))
    result = simulate(snap, Call(15001, "reviews:9080", "/", method="OPTIONS"))
    assert cors_preflight(result, "https://example.com", "POST") == {
        "access-control-allow-origin": "https://example.com",
        "access-control-allow-methods": "POST,GET",
        "access-control-allow-headers": "X-Foo-Bar",
        "access-control-max-age": "86400",
        "access-control-allow-credentials": "true"}
    assert cors_preflight(result, "https://a.example.org", "GET") is not None
    assert cors_preflight(result, "https://evil.example.net", "GET") is None
    assert cors_preflight(result, "https://example.com", "DELETE") is None
    assert result.cors is not None and result.cors["expose_headers"] == "X-Expose"
    manager = snap.listeners["outbound_http"]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in manager["http_filters"]]
    assert names.index("envoy.filters.http.cors") < names.index("envoy.filters.http.router")


# --- consistent hashing -----------------------------------------------------------------


@pytest.mark.parametrize(("key", "policy"), [
    ("httpHeaderName: x-user", {"header": {"header_name": "x-user"}}),
    ("httpCookie: {name: user, ttl: 0s}", {"cookie": {"name": "user", "ttl": "0s"}}),
    ("httpCookie: {name: user, ttl: 10s, path: /}",
     {"cookie": {"name": "user", "ttl": "10s", "path": "/"}}),
    ("useSourceIp: true", {"connection_properties": {"source_ip": True}}),
    ("httpQueryParameterName: user", {"query_parameter": {"name": "user"}}),
])
def test_consistent_hash_keys_become_the_route_hash_policy_and_a_ring(key, policy):
    rule = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  trafficPolicy:\n"
                           f"    loadBalancer: {{consistentHash: {{{key}}}}}\n")
    snap = snapshot(SIDECAR, rule)
    result = simulate(snap, reviews_call(SIDECAR))
    assert result.hash_policy == [policy]
    cluster = snap.clusters[result.cluster]
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["ring_hash_lb_config"] == {"minimum_ring_size": "1024"}
    # A VirtualService's route to the host carries the same hash policy.
    routed = simulate(snapshot(SIDECAR, rule, vs(TO_V1)), reviews_call(SIDECAR))
    assert routed.hash_policy == [policy]


def test_maglev_and_ring_sizes():
    rule = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  trafficPolicy:\n"
                           "    loadBalancer: {consistentHash: {useSourceIp: true, "
                           "maglev: {tableSize: 65537}}}\n")
    cluster = snapshot(SIDECAR, rule).clusters[f"outbound|9080||{REVIEWS}"]
    assert (cluster["lb_policy"], cluster["maglev_lb_config"]) == \
        ("MAGLEV", {"table_size": "65537"})
    ring = rule.replace("maglev: {tableSize: 65537}", "ringHash: {minimumRingSize: 64}")
    cluster = snapshot(SIDECAR, ring).clusters[f"outbound|9080||{REVIEWS}"]
    assert cluster["ring_hash_lb_config"] == {"minimum_ring_size": "64"}


# --- redirects, rewrites, headers, aborts, retries --------------------------------------


@pytest.mark.parametrize(("redirect", "expected"), [
    ("{uri: /v2, scheme: https, port: 8443, redirectCode: 308}",
     {"path_redirect": "/v2", "scheme_redirect": "https", "port_redirect": 8443,
      "response_code": "PERMANENT_REDIRECT"}),
    ("{authority: new.example.com, derivePort: FROM_REQUEST_PORT}",
     {"host_redirect": "new.example.com", "port_redirect": 9080,
      "response_code": "MOVED_PERMANENTLY"}),
    ("{scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}",
     {"scheme_redirect": "https", "response_code": "MOVED_PERMANENTLY"}),
])
def test_redirects_carry_scheme_port_and_code(redirect, expected):
    http = f"  - redirect: {redirect}\n"
    result = simulate(snapshot(SIDECAR, vs(http)), reviews_call(SIDECAR))
    assert result.redirect == expected


def test_uri_regex_rewrite_and_grpc_abort():
    http = TO_V1 + """    rewrite:
      uriRegexRewrite: {match: ^/reviews/(.*), rewrite: /v2/\\1}
    fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
"""
    snap = snapshot(SIDECAR, SUBSETS, vs(http))
    result = simulate(snap, reviews_call(SIDECAR))
    route = next(r for vh in snap.routes["outbound_http"]["virtual_hosts"]
                 for r in vh["routes"] if r.get("name") == result.route)
    assert route["route"]["regex_rewrite"] == {"pattern": {"regex": "^/reviews/(.*)"},
                                               "substitution": "/v2/\\1"}
    assert result.fault is not None and result.fault["abort"]["grpc_status"] == 14


def test_per_destination_headers_go_on_their_weighted_cluster_or_the_route():
    weighted = """  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers: {request: {set: {x-version: v1}}}
    - destination: {host: reviews, subset: v2}
      weight: 50
      headers: {response: {add: {x-from: v2}}}
"""
    snap = snapshot(SIDECAR, SUBSETS, vs(weighted))
    route = next(r for vh in snap.routes["outbound_http"]["virtual_hosts"]
                 for r in vh["routes"] if r.get("name") == f"{NS}.reviews.0.0")
    v1, v2 = route["route"]["weighted_clusters"]["clusters"]
    assert v1["request_headers_to_add"][0]["header"] == {"key": "x-version", "value": "v1"}
    assert v2["response_headers_to_add"][0]["header"] == {"key": "x-from", "value": "v2"}
    single = TO_V1 + "      headers: {request: {remove: [cookie]}}\n"
    snap = snapshot(SIDECAR, SUBSETS, vs(single))
    route = next(r for vh in snap.routes["outbound_http"]["virtual_hosts"]
                 for r in vh["routes"] if r.get("name") == f"{NS}.reviews.0.0")
    assert route["request_headers_to_remove"] == ["cookie"]


def test_retries_keep_attempts_per_try_timeout_and_retry_on_and_add_backoff():
    http = TO_V1 + """    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: 5xx,connect-failure,503
      retryIgnorePreviousHosts: false
      backoff: 50ms
"""
    snap = snapshot(SIDECAR, SUBSETS, vs(http))
    route = next(r for vh in snap.routes["outbound_http"]["virtual_hosts"]
                 for r in vh["routes"] if r.get("name") == f"{NS}.reviews.0.0")
    policy = route["route"]["retry_policy"]
    assert (policy["num_retries"], policy["per_try_timeout"]) == (3, "2s")
    assert policy["retry_on"] == "5xx,connect-failure,retriable-status-codes"
    assert policy["retriable_status_codes"] == [503]
    assert policy["retry_back_off"] == {"base_interval": "0.05s"}
    assert "retry_host_predicate" not in policy


# --- DestinationRule pool and outlier fields --------------------------------------------


def test_outlier_local_origin_split_keepalive_and_connection_duration():
    rule = SUBSETS.replace("  host: reviews\n", """  host: reviews
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnectionDuration: 30s
        tcpKeepalive: {probes: 3, time: 60s, interval: 10s}
    outlierDetection:
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
      consecutive5xxErrors: 3
""")
    cluster = snapshot(SIDECAR, rule).clusters[f"outbound|9080||{REVIEWS}"]
    od = cluster["outlier_detection"]
    assert od["split_external_local_origin_errors"] is True
    assert (od["consecutive_local_origin_failure"], od["consecutive_5xx"]) == (2, 3)
    assert cluster["upstream_connection_options"]["tcp_keepalive"] == {
        "keepalive_probes": 3, "keepalive_time": 60, "keepalive_interval": 10}
    options = cluster["typed_extension_protocol_options"]
    common = next(iter(options.values()))["common_http_protocol_options"]
    assert common["max_connection_duration"] == "30s"


# --- gateway TLS settings ---------------------------------------------------------------


GATEWAY_TLS = f"""
apiVersion: v1
kind: Secret
metadata: {{name: cred, namespace: istio-system}}
type: kubernetes.io/tls
data: {{tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [bookinfo.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls:
      mode: MUTUAL
      credentialName: cred
      minProtocolVersion: TLSV1_3
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
      subjectAltNames: [client.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo, namespace: {NS}}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: reviews}}
"""


def test_https_redirect_requires_tls_on_the_plain_port():
    snap = snapshot(GATEWAY, GATEWAY_TLS)
    vhost = snap.routes["http.8080"]["virtual_hosts"][0]
    assert vhost["require_tls"] == "ALL"
    assert "require_tls" not in next(
        c for name, c in snap.routes.items() if name.startswith("https."))["virtual_hosts"][0]


def gateway_tls_snapshot() -> Snapshot:
    """GATEWAY_TLS on a gateway that also listens on 443."""
    gw_workload = replace(GATEWAY_WORKLOAD, ports={8080: 30080, 443: 30443})
    proxy = Proxy(GATEWAY.id, "router", "istio-system", gw_workload)
    resources = []
    for text in (SERVICES, INGRESS_SERVICE, GATEWAY_TLS):
        resources += load(text, namespace=None if "namespace:" in text else NS)
    store = ConfigStore.with_namespaces([NS, "istio-system"]).with_applied(resources)
    return build_snapshot(proxy, PushContext(store, (*WORKLOADS, gw_workload), (proxy,)))


def test_gateway_tls_versions_ciphers_and_client_san():
    snap = gateway_tls_snapshot()
    chain = next(c for c in snap.listeners["0.0.0.0_443"]["filter_chains"]
                 if "transport_socket" in c)
    common = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_3",
                                    "tls_maximum_protocol_version": "TLSv1_3",
                                    "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384"]}
    validation = common["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == \
        "kubernetes://cred-cacert"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"][0][
        "matcher"] == {"exact": "client.example.com"}


# --- tcp and tls rules at sidecars (CONNECT tunnels) --------------------------------------


TCP_ECHO = "tcp-echo.bookinfo-test.svc.cluster.local"
TCP_SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def tcp_vs(rules: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo]
{rules}"""


def test_mesh_tcp_weights_split_a_sidecar_tunnel():
    rules = """  tcp:
  - match: [{port: 9000}]
    route:
    - {destination: {host: tcp-echo, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, subset: v2}, weight: 20}
"""
    snap = snapshot(SIDECAR, TCP_SUBSETS, tcp_vs(rules))
    result = simulate(snap, Call(15001, "tcp-echo:9000", method="CONNECT"))
    assert result.clusters == {f"outbound|9000|v1|{TCP_ECHO}": 80,
                               f"outbound|9000|v2|{TCP_ECHO}": 20}


def test_mesh_tcp_rule_on_another_port_or_for_other_clients_is_not_applied():
    other_port = """  tcp:
  - match: [{port: 9001}]
    route: [{destination: {host: tcp-echo, subset: v2}}]
"""
    snap = snapshot(SIDECAR, TCP_SUBSETS, tcp_vs(other_port))
    assert simulate(snap, Call(15001, "tcp-echo:9000", method="CONNECT")).cluster == \
        f"outbound|9000||{TCP_ECHO}"
    for_sleep = other_port.replace("port: 9001", "sourceLabels: {app: sleep}")
    assert simulate(snapshot(SLEEP, TCP_SUBSETS, tcp_vs(for_sleep)),
                    Call(15003, "tcp-echo:9000", method="CONNECT")).cluster == \
        f"outbound|9000|v2|{TCP_ECHO}"
    assert simulate(snapshot(SIDECAR, TCP_SUBSETS, tcp_vs(for_sleep)),
                    Call(15001, "tcp-echo:9000", method="CONNECT")).cluster == \
        f"outbound|9000||{TCP_ECHO}"


def test_plain_http_to_a_tcp_port_passes_through_with_tcp_rules_only():
    """Istio treats a `tcp-` port as opaque: an HTTP request on it reaches the Service by
    the tcp rules (never by http rules), where a 404 NR would be silently wrong."""
    rules = """  http:
  - route: [{destination: {host: tcp-echo, subset: v1}}]
  tcp:
  - match: [{port: 9000}]
    route:
    - {destination: {host: tcp-echo, subset: v1}, weight: 30}
    - {destination: {host: tcp-echo, subset: v2}, weight: 70}
"""
    snap = snapshot(SIDECAR, TCP_SUBSETS, tcp_vs(rules))
    result = simulate(snap, Call(15001, "tcp-echo:9000", "/anything"))
    assert result.clusters == {f"outbound|9000|v1|{TCP_ECHO}": 30,
                               f"outbound|9000|v2|{TCP_ECHO}": 70}
    assert result.route == "opaque_tcp"
    assert "retry_policy" not in result.envoy_route["route"]
    no_rules = snapshot(SIDECAR, TCP_SUBSETS)
    assert simulate(no_rules, Call(15001, "tcp-echo:9000")).cluster == \
        f"outbound|9000||{TCP_ECHO}"


def test_plain_http_to_a_tcp_port_from_a_pod_without_sidecar_reaches_an_endpoint():
    kube = Proxy(node_id("kube", "kube-proxy", "kube-system"), "kube", "kube-system",
                 kube_ports={NS: 15009})
    result = simulate(snapshot(kube, TCP_SUBSETS), Call(15009, "tcp-echo:9000"))
    assert (result.route, result.cluster) == ("opaque_tcp", f"kube|9000||{TCP_ECHO}")


def test_mesh_tls_rule_matches_the_tunnel_host_as_its_sni():
    rules = """  tls:
  - match: [{sniHosts: [tcp-echo], port: 9000}]
    route: [{destination: {host: tcp-echo, subset: v2}}]
  tcp:
  - route: [{destination: {host: tcp-echo, subset: v1}}]
"""
    snap = snapshot(SIDECAR, TCP_SUBSETS, tcp_vs(rules))
    assert simulate(snap, Call(15001, "tcp-echo.bookinfo-test:9000", method="CONNECT")
                    ).cluster == f"outbound|9000|v2|{TCP_ECHO}"
    no_sni = rules.replace("sniHosts: [tcp-echo]", "sniHosts: [other.example.com]")
    snap = snapshot(SIDECAR, TCP_SUBSETS, tcp_vs(no_sni))
    assert simulate(snap, Call(15001, "tcp-echo:9000", method="CONNECT")).cluster == \
        f"outbound|9000|v1|{TCP_ECHO}"


def test_gateway_tcp_rule_honours_source_labels():
    gateway = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 31400, name: tcp, protocol: TCP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{{sourceLabels: {{app: nobody}}}}]
    route: [{{destination: {{host: tcp-echo, subset: v2}}}}]
  - route: [{{destination: {{host: tcp-echo, subset: v1}}}}]
"""
    result = simulate(snapshot(GATEWAY, TCP_SUBSETS, gateway), Call(31400))
    assert result.cluster == f"outbound|9000|v1|{TCP_ECHO}"


def test_warmup_becomes_slow_start_and_retry_budget_a_threshold():
    rule = SUBSETS.replace("  host: reviews\n", """  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {duration: 30s, aggression: 2.0, minimumPercent: 10}
    retryBudget: {percent: 25, minRetryConcurrency: 5}
""")
    cluster = snapshot(SIDECAR, rule).clusters[f"outbound|9080||{REVIEWS}"]
    assert cluster["round_robin_lb_config"]["slow_start_config"] == {
        "slow_start_window": "30s",
        "aggression": {"default_value": 2.0, "runtime_key": "istio.warmup.aggression"},
        "min_weight_percent": {"value": 10.0}}
    assert cluster["circuit_breakers"]["thresholds"][0]["retry_budget"] == {
        "budget_percent": {"value": 25.0}, "min_retry_concurrency": 5}
    older = SUBSETS.replace("  host: reviews\n", "  host: reviews\n  trafficPolicy:\n"
                            "    loadBalancer: {warmupDurationSecs: 10s}\n")
    cluster = snapshot(SIDECAR, older).clusters[f"outbound|9080||{REVIEWS}"]
    assert cluster["least_request_lb_config"]["slow_start_config"] == {
        "slow_start_window": "10s"}


def test_every_new_field_parses_as_envoy_protobuf():
    """Mirrors, CORS, hashing, rewrites, redirects, per-destination headers, warmup, retry
    budgets, keepalives and gateway TLS settings are all valid Envoy config."""
    from lablib.controlplane.ads import to_any

    rule = SUBSETS.replace("  host: reviews\n", """  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: u, ttl: 5s, path: /}, maglev: {}}}
    retryBudget: {percent: 25}
    connectionPool: {tcp: {tcpKeepalive: {time: 60s}, maxConnectionDuration: 1h}}
    outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}
""")
    http = CORS.replace("    corsPolicy:", """    mirror: {host: reviews, subset: v2}
    mirrors: [{destination: {host: reviews, subset: v3}, percentage: {value: 5}}]
    rewrite: {uriRegexRewrite: {match: ^/a(.*), rewrite: /b\\\\1}}
    retries: {attempts: 2, backoff: 25ms}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}}
    corsPolicy:""") + """  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50, headers: {request: {set: {a: b}}}}
    - {destination: {host: reviews, subset: v2}, weight: 50}
  - redirect: {scheme: https, port: 8443, redirectCode: 307}
"""
    for snap in (snapshot(SIDECAR, rule, vs(http)), gateway_tls_snapshot()):
        for by_name in snap.resources.values():
            for resource in by_name.values():
                assert to_any(resource).type_url == resource["@type"]


def test_a_subset_whose_rule_does_not_apply_to_the_client_is_a_missing_cluster():
    # As in Istio: the route names the subset's cluster, which this client does not have,
    # so Envoy answers 503 (NC) instead of sending the request anywhere else.
    scoped = SUBSETS.replace("  host: reviews\n",
                             "  host: reviews\n  workloadSelector: {matchLabels: {app: sleep}}\n")
    snap = snapshot(SIDECAR, scoped, vs(TO_V1))
    route = next(r for vh in snap.routes["outbound_http"]["virtual_hosts"]
                 for r in vh["routes"] if r.get("name") == f"{NS}.reviews.0.0")
    assert route["route"]["cluster"] == f"outbound|9080|v1|{REVIEWS}"
    assert f"outbound|9080|v1|{REVIEWS}" not in snap.clusters
    assert f"outbound|9080|v1|{REVIEWS}" in snapshot(SLEEP, scoped, vs(TO_V1)).clusters


def test_a_gateway_sees_virtual_services_exported_to_its_own_namespace():
    # The ingress gateway runs in istio-system: a VirtualService exported only to its own
    # namespace (".") is invisible to it, as in Istio.
    bound = gateway_vs("""  exportTo: [EXPORT]
  http:
  - route: [{destination: {host: reviews}}]
""")
    private = snapshot(GATEWAY, bound.replace("EXPORT", "."))
    assert private.routes["http.8080"]["virtual_hosts"] == []
    shared = snapshot(GATEWAY, bound.replace("EXPORT", "istio-system"))
    assert simulate(shared, Call(30080, "x.example.com")).cluster == f"outbound|9080||{REVIEWS}"
