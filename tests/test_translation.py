"""Translation tests: build a proxy's config from Istio YAML and simulate calls through it."""

from __future__ import annotations

import pytest

from lablib.config.loader import load
from lablib.config.meshconfig import MeshConfig
from lablib.config.store import ConfigStore
from lablib.controlplane.clusters import UNLIMITED
from lablib.controlplane.context import Proxy, PushContext, Workload
from lablib.controlplane.naming import node_id
from lablib.controlplane.simulate import Call, ErrNoCluster, ErrNoListener, ErrNoRoute, simulate
from lablib.controlplane.snapshot import InconsistentSnapshot, Snapshot, build_snapshot, check

NS = "bookinfo-test"
SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: productpage}
spec:
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9000}]
"""
SUBSETS = """
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""
INGRESS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  type: LoadBalancer
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: tcp, port: 31400, targetPort: 31400, nodePort: 31400}
"""


def workload(name: str, labels: dict[str, str], port: int, ns: str = NS) -> Workload:
    return Workload(name, ns, labels, "default", True, {9080: port})


WORKLOADS = (
    workload("reviews-v1-a", {"app": "reviews", "version": "v1"}, 20001),
    workload("reviews-v2-a", {"app": "reviews", "version": "v2"}, 20002),
    workload("reviews-v3-a", {"app": "reviews", "version": "v3"}, 20003),
    workload("productpage-v1-a", {"app": "productpage", "version": "v1"}, 20010),
)
SIDECAR = Proxy(node_id("sidecar", "productpage-v1-a", NS), "sidecar", NS, WORKLOADS[3],
                outbound_port=15001, app_ports={9080: 21010})
GATEWAY_WORKLOAD = Workload("istio-ingressgateway-a", "istio-system",
                            {"istio": "ingressgateway"}, "gw", False,
                            {8080: 30080, 31400: 31400})
GATEWAY = Proxy(node_id("router", "istio-ingressgateway-a", "istio-system"), "router",
                "istio-system", GATEWAY_WORKLOAD)


def snapshot_for(proxy: Proxy, *yaml_docs: str, mtls: bool = False,
                 mesh_config: MeshConfig | None = None) -> Snapshot:
    resources = []
    for text in (SERVICES, INGRESS_SERVICE, *yaml_docs):
        resources += load(text, namespace=None if "istio-system" in text else NS)
    store = ConfigStore.with_namespaces([NS, "istio-system"]).with_applied(resources)
    identities = {p.id: ("CHAIN", "KEY") for p in (SIDECAR, GATEWAY)} if mtls else {}
    ctx = PushContext(store, (*WORKLOADS, GATEWAY_WORKLOAD), (SIDECAR, GATEWAY), {},
                      identities, "ROOT" if mtls else "", mesh_config=mesh_config or MeshConfig())
    return build_snapshot(proxy, ctx)


def test_unrouted_service_goes_to_every_endpoint():
    snap = snapshot_for(SIDECAR)
    result = simulate(snap, Call(15001, "reviews:9080", "/reviews/0"))
    assert result.cluster == "outbound|9080||reviews.bookinfo-test.svc.cluster.local"
    endpoints = snap.clusters[result.cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert sorted(e["endpoint"]["address"]["socket_address"]["port_value"]
                  for e in endpoints) == [20001, 20002, 20003]


@pytest.mark.parametrize("authority", ["reviews:9080", "reviews.bookinfo-test:9080",
                                       "reviews.bookinfo-test.svc.cluster.local:9080"])
def test_service_names_resolve_in_every_form(authority):
    assert simulate(snapshot_for(SIDECAR), Call(15001, authority)).clusters


def test_short_name_only_resolves_in_own_namespace():
    other = Proxy(node_id("sidecar", "sleep-a", "other"), "sidecar", "other",
                  workload("sleep-a", {"app": "sleep"}, 20099, ns="other"), outbound_port=15002)
    snap = snapshot_for(other)
    # A name the mesh does not know leaves it (ALLOW_ANY), as a name DNS resolved would.
    assert simulate(snap, Call(15002, "reviews:9080")).cluster == "PassthroughCluster"
    assert simulate(snap, Call(15002, "reviews.bookinfo-test:9080")).clusters


def test_subset_route_sends_everything_to_v1():
    vs = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""
    snap = snapshot_for(SIDECAR, SUBSETS, vs)
    result = simulate(snap, Call(15001, "reviews:9080", "/reviews/0"))
    assert result.cluster == "outbound|9080|v1|reviews.bookinfo-test.svc.cluster.local"
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in snap.clusters[result.cluster]["load_assignment"]["endpoints"][0][
                 "lb_endpoints"]]
    assert ports == [20001]


def test_header_match_routes_jason_to_v2_and_others_to_v1():
    vs = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"""
    snap = snapshot_for(SIDECAR, SUBSETS, vs)
    jason = simulate(snap, Call(15001, "reviews:9080", headers={"end-user": "jason"}))
    other = simulate(snap, Call(15001, "reviews:9080", headers={"end-user": "Jason"}))
    anonymous = simulate(snap, Call(15001, "reviews:9080"))
    assert jason.cluster.startswith("outbound|9080|v2|")
    assert other.cluster.startswith("outbound|9080|v1|")
    assert anonymous.cluster.startswith("outbound|9080|v1|")


def test_weighted_route_keeps_the_weights():
    vs = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
"""
    result = simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080"))
    assert result.clusters == {"outbound|9080|v1|reviews.bookinfo-test.svc.cluster.local": 50,
                               "outbound|9080|v3|reviews.bookinfo-test.svc.cluster.local": 50}


def test_fault_and_timeout_are_carried_on_the_route():
    vs = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - fault:
      delay: {percentage: {value: 100.0}, fixedDelay: 7s}
    timeout: 0.5s
    route:
    - destination: {host: reviews, subset: v1}
"""
    result = simulate(snapshot_for(SIDECAR, SUBSETS, vs), Call(15001, "reviews:9080"))
    assert result.fault["delay"]["fixed_delay"] == "7s"
    assert result.fault["delay"]["percentage"] == {"numerator": 1000000, "denominator": "MILLION"}
    assert result.timeout == "0.5s"


def test_inbound_listener_forwards_to_the_app():
    snap = snapshot_for(SIDECAR)
    result = simulate(snap, Call(20010, "productpage:9080", "/productpage"))
    assert result.cluster == "inbound|9080||"
    app = snap.clusters["inbound|9080||"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert app["endpoint"]["address"]["socket_address"]["port_value"] == 21010


GATEWAY_YAML = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    route:
    - destination: {host: productpage, port: {number: 9080}}
"""


def test_gateway_routes_productpage_and_refuses_other_paths():
    snap = snapshot_for(GATEWAY, GATEWAY_YAML)
    assert "http.8080" in snap.routes
    result = simulate(snap, Call(30080, "127.0.0.1:30080", "/productpage"))
    assert result.cluster == "outbound|9080||productpage.bookinfo-test.svc.cluster.local"
    assert simulate(snap, Call(30080, "x", "/static/css/style.css")).clusters
    with pytest.raises(ErrNoRoute):
        simulate(snap, Call(30080, "127.0.0.1:30080", "/admin"))


def test_gateway_server_port_80_means_target_port_8080():
    snap = snapshot_for(GATEWAY, GATEWAY_YAML.replace("number: 8080", "number: 80"))
    assert simulate(snap, Call(30080, "x", "/productpage")).clusters


def test_gateway_without_gateway_resource_has_no_listener():
    with pytest.raises(ErrNoListener):
        simulate(snapshot_for(GATEWAY), Call(30080, "x", "/productpage"))


def test_tcp_route_on_gateway_splits_by_weight():
    tcp = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: tcp-echo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match: [{port: 31400}]
    route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 20}
"""
    result = simulate(snapshot_for(GATEWAY, tcp), Call(31400))
    assert result.clusters == {"outbound|9000|v1|tcp-echo.bookinfo-test.svc.cluster.local": 80,
                               "outbound|9000|v2|tcp-echo.bookinfo-test.svc.cluster.local": 20}


def test_a_route_to_a_missing_cluster_is_kept_and_answers_no_cluster():
    """As in Istio, a route whose Service was deleted stays (Envoy answers 503 NC), so a
    delete is never refused; a listener naming missing routes is still refused."""
    snap = snapshot_for(SIDECAR)
    broken = Snapshot(snap.proxy_id, {k: dict(v) for k, v in snap.resources.items()})
    for cluster in list(broken.clusters):
        if cluster.startswith("outbound|9080||reviews"):
            del broken.clusters[cluster]
    check(broken)
    with pytest.raises(ErrNoCluster, match="missing cluster outbound"):
        simulate(broken, Call(15001, "reviews:9080"))
    for name in list(broken.routes):
        del broken.routes[name]
    with pytest.raises(InconsistentSnapshot, match="uses missing routes"):
        check(broken)


def test_every_resource_parses_as_envoy_protobuf():
    """The JSON we build is accepted by Envoy's own schema (protobuf), field by field."""
    from lablib.controlplane.ads import to_any

    snap = snapshot_for(GATEWAY, GATEWAY_YAML, SUBSETS, mtls=True)
    for resources in (snapshot_for(SIDECAR, SUBSETS, mtls=True).resources, snap.resources):
        for by_name in resources.values():
            for resource in by_name.values():
                assert to_any(resource).type_url == resource["@type"]


def test_retries_become_envoys_retry_policy():
    vs = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,503"}
    route: [{destination: {host: reviews, subset: v1}}]
"""
    snap = snapshot_for(SIDECAR, SUBSETS, vs)
    route = snap.routes["outbound_http"]
    action = next(r["route"] for vh in route["virtual_hosts"]
                  if vh["name"].startswith("reviews.") for r in vh["routes"] if "prefix" in
                  r["match"])
    policy = action["retry_policy"]
    assert policy["num_retries"] == 3 and policy["per_try_timeout"] == "2s"
    assert policy["retry_on"] == "gateway-error,connect-failure,retriable-status-codes"
    assert policy["retriable_status_codes"] == [503]


def test_no_timeout_means_none_and_default_retries_as_istio():
    result = simulate(snapshot_for(SIDECAR), Call(15001, "reviews:9080"))
    assert result.timeout == "0s"  # Istio disables Envoy's 15 s default route timeout


TRAFFIC_POLICY = """
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, http2MaxRequests: 7}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m,
                       maxEjectionPercent: 100}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 9}}
  - {name: v2, labels: {version: v2}}
"""


def test_destination_rule_policy_at_host_port_and_subset_level():
    snap = snapshot_for(SIDECAR, TRAFFIC_POLICY)
    host = snap.clusters[f"outbound|9080||reviews.{NS}.svc.cluster.local"]
    v1 = snap.clusters[f"outbound|9080|v1|reviews.{NS}.svc.cluster.local"]
    v2 = snap.clusters[f"outbound|9080|v2|reviews.{NS}.svc.cluster.local"]
    assert host["circuit_breakers"]["thresholds"][0] == {
        "max_connections": 1, "max_pending_requests": 1, "max_requests": 7,
        "max_retries": UNLIMITED, "track_remaining": True}
    options = host["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"]["max_requests_per_connection"] == 1
    assert host["outlier_detection"]["consecutive_5xx"] == 1
    assert host["outlier_detection"]["base_ejection_time"] == "180s"
    assert host["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
    assert host["lb_policy"] == "RANDOM"  # port level beats host level
    assert v1["circuit_breakers"]["thresholds"][0]["max_connections"] == 9  # subset level
    # Istio merges subset policy field by field: a subset's connectionPool replaces the
    # host's whole connectionPool, so the host's pending-request limit does not carry over.
    assert v1["circuit_breakers"]["thresholds"][0]["max_pending_requests"] == UNLIMITED
    assert v1["outlier_detection"]["consecutive_5xx"] == 1  # untouched fields do carry over
    assert v2["circuit_breakers"]["thresholds"][0]["max_connections"] == 1  # inherits host


def test_every_outbound_cluster_tracks_remaining_as_istio_sets_it():
    """Istio gives every cluster unlimited default thresholds with `track_remaining`, which
    the circuit-breaking task's `pilot-agent request GET stats | grep pending` relies on."""
    snap = snapshot_for(SIDECAR, SUBSETS)
    outbound = [c for name, c in snap.clusters.items() if name.startswith("outbound|")]
    assert outbound
    for cluster in outbound:
        assert cluster["circuit_breakers"]["thresholds"] == [{
            "max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
            "max_requests": UNLIMITED, "max_retries": UNLIMITED, "track_remaining": True}]


def test_auto_mtls_to_sidecars_checks_their_spiffe_identity():
    snap = snapshot_for(SIDECAR, SUBSETS, mtls=True)
    cluster = snap.clusters[f"outbound|9080|v1|reviews.{NS}.svc.cluster.local"]
    tls = cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    sans = tls["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "URI",
                     "matcher": {"exact": f"spiffe://cluster.local/ns/{NS}/sa/default"}}]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
        "tlsMode": "istio"}
    assert {"default", "ROOTCA"} <= set(snap.secrets)


def test_permissive_inbound_has_a_tls_and_a_plaintext_chain():
    snap = snapshot_for(SIDECAR, mtls=True)
    inbound = snap.listeners["inbound|9080"]
    kinds = [c["filter_chain_match"]["transport_protocol"] for c in inbound["filter_chains"]]
    assert kinds == ["tls", "raw_buffer"]
    strict = snapshot_for(SIDECAR, """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
""", mtls=True)
    chains = strict.listeners["inbound|9080"]["filter_chains"]
    assert [c["filter_chain_match"]["transport_protocol"] for c in chains] == ["tls"]


def test_a_zero_weight_tcp_destination_is_left_out():
    tcp = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: tcp-gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 31400, name: tcp, protocol: TCP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: ["*"]
  gateways: [tcp-gw]
  tcp:
  - match: [{port: 31400}]
    route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 100}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 0}
"""
    result = simulate(snapshot_for(GATEWAY, tcp), Call(31400))
    assert result.clusters == {f"outbound|9000|v1|tcp-echo.{NS}.svc.cluster.local": 100}


def test_gateway_route_match_port_means_the_server_port():
    matched = GATEWAY_YAML.replace("number: 8080", "number: 80").replace(
        "    - uri: {exact: /productpage}", "    - uri: {exact: /productpage}\n      port: 80")
    assert simulate(snapshot_for(GATEWAY, matched), Call(30080, "x", "/productpage")).clusters


IDLE_POLICY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo-test}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {idleTimeout: 5m, maxRequestsPerConnection: 3}}}
"""


@pytest.mark.parametrize("proxy", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
def test_every_cluster_closes_idle_pooled_connections_unless_a_rule_says_otherwise(proxy):
    snap = snapshot_for(proxy, IDLE_POLICY)
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    idle = {name: c["typed_extension_protocol_options"][options]["common_http_protocol_options"]
            for name, c in snap.clusters.items()}
    reviews = idle.pop(f"outbound|9080||reviews.{NS}.svc.cluster.local")
    assert reviews == {"idle_timeout": "300s", "max_requests_per_connection": 3}
    # A TCP port's clusters give each plain HTTP request its own upstream connection (the
    # bytes Istio passes through are one connection per client's).
    tcp = {name for name in idle if name.startswith(("outbound|9000|", "outbound|31400|"))}
    assert tcp and all(idle.pop(name) == {"idle_timeout": "60s", "max_requests_per_connection": 1}
                       for name in sorted(tcp))
    assert idle and all(common == {"idle_timeout": "60s"} for common in idle.values()), idle


def test_a_service_is_reached_by_its_cluster_ip_as_by_its_name():
    """Istio lists a Service's cluster IP among its outbound virtual host's domains, so
    `curl http://CLUSTER_IP:9080/` from a pod is routed like `curl http://ratings:9080/`."""
    with_ip = """\
apiVersion: v1
kind: Service
metadata: {name: ratings}
spec:
  clusterIP: 127.96.0.42
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
"""
    snap = snapshot_for(SIDECAR, with_ip)
    by_ip = simulate(snap, Call(15001, "127.96.0.42:9080"))
    assert by_ip.clusters == simulate(snap, Call(15001, "ratings:9080")).clusters
    assert by_ip.clusters == {f"outbound|9080||ratings.{NS}.svc.cluster.local": 100}
