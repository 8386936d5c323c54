"""Egress translation: ServiceEntry hosts, ALLOW_ANY and REGISTRY_ONLY, the Sidecar's egress
scope and outboundTrafficPolicy, VirtualService and DestinationRule on external hosts, the
egress gateway pattern, and the LAB060x findings.

Calls are simulated through the generated config (lablib/controlplane/simulate.py); every
resource is also parsed by Envoy's own protobuf schema. tests/test_egress_mesh.py runs the
same features on real Envoy against the local outside world.
"""

from __future__ import annotations

import pytest

from lablib.config.analyze import analyze
from lablib.config.loader import load
from lablib.config.meshconfig import mesh_config
from lablib.config.store import ConfigStore
from lablib.controlplane.ads import to_any
from lablib.controlplane.context import OutsideWorld, Proxy, PushContext, Workload
from lablib.controlplane.naming import node_id
from lablib.controlplane.simulate import Call, ErrNoRoute, simulate
from lablib.controlplane.snapshot import Snapshot, build_snapshot

NS = "egress-unit"
OUTSIDE = OutsideWorld(40080, 40081, "/tmp/roots.pem", "/tmp/curl")
SLEEP = Workload("sleep-a", NS, {"app": "sleep"}, "sleep", True, {})
SLEEP_PROXY = Proxy(node_id("sidecar", "sleep-a", NS), "sidecar", NS, SLEEP, outbound_port=15001)
OTHER = Workload("sleep-b", "other", {"app": "sleep"}, "sleep", True, {})
OTHER_PROXY = Proxy(node_id("sidecar", "sleep-b", "other"), "sidecar", "other", OTHER,
                    outbound_port=15002)
EGRESS_WORKLOAD = Workload("istio-egressgateway-a", "istio-system",
                           {"istio": "egressgateway", "app": "istio-egressgateway"}, "egress",
                           False, {8080: 40180, 8443: 40443})
EGRESS = Proxy(node_id("router", "istio-egressgateway-a", "istio-system"), "router",
               "istio-system", EGRESS_WORKLOAD)
EGRESS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
"""
HTTPBIN = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"""
GOOGLE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: google}
spec:
  hosts: [www.google.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
  location: MESH_EXTERNAL
"""
# Istio's egress TLS origination task: port 80 sent to 443 with TLS the sidecar originates.
CNN_ORIGINATION = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: edition-cnn-com}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: edition-cnn-com}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE}
"""


def context(*docs: str, mode: str | None = None) -> PushContext:
    resources = []
    for text in (EGRESS_SERVICE, *docs):
        resources += load(text, namespace=None if "namespace: " in text else NS)
    store = ConfigStore.with_namespaces([NS, "other", "istio-system"]).with_applied(resources)
    values = {"meshConfig.outboundTrafficPolicy.mode": mode} if mode else {}
    return PushContext(store, (SLEEP, OTHER, EGRESS_WORKLOAD),
                       (SLEEP_PROXY, OTHER_PROXY, EGRESS), mesh_config=mesh_config("demo", values),
                       outside_world=OUTSIDE)


def snapshot(proxy: Proxy, *docs: str, mode: str | None = None) -> Snapshot:
    snap = build_snapshot(proxy, context(*docs, mode=mode))
    for resources in snap.resources.values():
        for resource in resources.values():
            to_any(resource)  # Envoy's schema accepts every resource
    return snap


def endpoints(snap: Snapshot, cluster: str) -> list[int]:
    found = snap.clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    return [e["endpoint"]["address"]["socket_address"]["port_value"] for e in found]


def http(authority: str, path: str = "/") -> Call:
    return Call(15001, authority, path)


def tunnel(authority: str) -> Call:
    return Call(15001, authority, method="CONNECT")


# --- ALLOW_ANY and REGISTRY_ONLY -----------------------------------------------------------


def test_allow_any_sends_unknown_hosts_to_the_passthrough_cluster():
    snap = snapshot(SLEEP_PROXY)
    assert simulate(snap, http("httpbin.org", "/headers")).cluster == "PassthroughCluster"
    assert simulate(snap, tunnel("www.google.com:443")).cluster == "PassthroughCluster"
    assert endpoints(snap, "PassthroughCluster") == [OUTSIDE.port]


def test_registry_only_answers_502_for_http_and_resets_tunnels():
    snap = snapshot(SLEEP_PROXY, mode="REGISTRY_ONLY")
    result = simulate(snap, http("httpbin.org", "/headers"))
    assert (result.direct_status, result.route) == (502, "block_all")
    assert simulate(snap, tunnel("www.google.com:443")).cluster == "BlackHoleCluster"
    assert endpoints(snap, "BlackHoleCluster") == [OUTSIDE.blackhole_port]


def test_registry_only_lets_service_entry_hosts_through():
    snap = snapshot(SLEEP_PROXY, HTTPBIN, GOOGLE, mode="REGISTRY_ONLY")
    assert simulate(snap, http("httpbin.org", "/headers")).cluster == "outbound|80||httpbin.org"
    assert simulate(snap, http("httpbin.org:80")).cluster == "outbound|80||httpbin.org"
    assert simulate(snap, tunnel("www.google.com:443")).cluster == \
        "outbound|443||www.google.com"
    assert endpoints(snap, "outbound|443||www.google.com") == [OUTSIDE.port]
    # A port the entry does not declare is still blocked.
    assert simulate(snap, tunnel("httpbin.org:443")).cluster == "BlackHoleCluster"


def test_plain_http_to_a_service_entrys_tls_port_passes_through_to_it():
    """Istio passes the bytes on a non-HTTP port to the entry's host, as a tunnel would go
    (the sidecar once answered 404 NR)."""
    snap = snapshot(SLEEP_PROXY, GOOGLE, mode="REGISTRY_ONLY")
    result = simulate(snap, http("www.google.com:443"))
    assert (result.route, result.cluster) == ("opaque_tcp", "outbound|443||www.google.com")


def test_in_mesh_services_still_win_over_the_catch_all():
    service = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 8000}]}
"""
    snap = snapshot(SLEEP_PROXY, service, mode="REGISTRY_ONLY")
    assert simulate(snap, http("web:8000")).cluster == \
        f"outbound|8000||web.{NS}.svc.cluster.local"


def test_a_sidecar_outbound_traffic_policy_overrides_the_mesh():
    sidecar = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
    assert simulate(snapshot(SLEEP_PROXY, sidecar), http("httpbin.org")).direct_status == 502
    # Only its own namespace: the other namespace keeps the mesh's ALLOW_ANY.
    other = snapshot(OTHER_PROXY, sidecar)
    assert simulate(other, Call(15002, "httpbin.org")).cluster == "PassthroughCluster"


def test_sidecar_egress_hosts_scope_services_and_service_entries():
    service = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 8000}]}
"""
    sidecar = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - hosts: ["istio-system/*", "*/httpbin.org"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
    snap = snapshot(SLEEP_PROXY, service, HTTPBIN, GOOGLE, sidecar)
    assert simulate(snap, http("httpbin.org")).cluster == "outbound|80||httpbin.org"
    assert simulate(snap, tunnel("www.google.com:443")).cluster == "BlackHoleCluster"
    assert simulate(snap, http("web:8000")).direct_status == 502
    assert simulate(snap, http("istio-egressgateway.istio-system")).cluster == \
        "outbound|80||istio-egressgateway.istio-system.svc.cluster.local"


def test_export_to_dot_hides_an_entry_from_other_namespaces():
    private = HTTPBIN.replace("  location: MESH_EXTERNAL", "  exportTo: ['.']")
    assert simulate(snapshot(SLEEP_PROXY, private, mode="REGISTRY_ONLY"),
                    http("httpbin.org")).cluster == "outbound|80||httpbin.org"
    assert simulate(snapshot(OTHER_PROXY, private, mode="REGISTRY_ONLY"),
                    Call(15002, "httpbin.org")).direct_status == 502


def test_wildcard_hosts_with_resolution_none():
    wiki = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: NONE
"""
    snap = snapshot(SLEEP_PROXY, wiki, mode="REGISTRY_ONLY")
    for host in ("en.wikipedia.org:443", "de.wikipedia.org:443"):
        assert simulate(snap, tunnel(host)).cluster == "outbound|443||*.wikipedia.org"
    assert simulate(snap, tunnel("wikipedia.org:443")).cluster == "BlackHoleCluster"


def test_static_endpoints_on_loopback_and_subsets_by_endpoint_labels():
    local = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 41001}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 41002}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy}
spec:
  host: legacy.example.com
  subsets: [{name: v2, labels: {version: v2}}]
"""
    snap = snapshot(SLEEP_PROXY, local)
    assert endpoints(snap, "outbound|80||legacy.example.com") == [41001, 41002]
    assert endpoints(snap, "outbound|80|v2|legacy.example.com") == [41002]


# --- VirtualService and DestinationRule on external hosts ----------------------------------


def test_a_timeout_and_retries_on_an_external_host():
    rule = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    retries: {attempts: 0}
    route:
    - destination: {host: httpbin.org}
"""
    result = simulate(snapshot(SLEEP_PROXY, HTTPBIN, rule), http("httpbin.org", "/delay/5"))
    assert result.cluster == "outbound|80||httpbin.org"
    assert result.timeout == "3s"


def test_tls_origination_at_the_sidecar_upgrades_port_80():
    snap = snapshot(SLEEP_PROXY, CNN_ORIGINATION)
    assert simulate(snap, http("edition.cnn.com", "/politics")).cluster == \
        "outbound|80||edition.cnn.com"
    cluster = snap.clusters["outbound|80||edition.cnn.com"]
    tls = cluster["transport_socket"]["typed_config"]
    root = tls["common_tls_context"]["combined_validation_context"][
        "validation_context_sds_secret_config"]["name"]
    assert root == "file-root:system"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["upstream_http_protocol_options"]
    assert options == {"auto_sni": True, "auto_san_validation": True}
    # Port 443 is left as it is: the client's own TLS is tunnelled.
    assert "transport_socket" not in snap.clusters["outbound|443||edition.cnn.com"]


def test_the_egress_gateway_finds_the_destination_rule_where_the_service_entry_lives():
    """Istio looks for a host's DestinationRule in the client's namespace, then in the
    namespace that declares the host (a ServiceEntry's own, not a piece of the host name:
    `edition.cnn.com` is not in a namespace `cnn`), then in istio-system."""
    gateway = snapshot(EGRESS, CNN_ORIGINATION)
    cluster = gateway.clusters["outbound|80||edition.cnn.com"]
    assert cluster["transport_socket"]["typed_config"]["common_tls_context"]


def test_an_explicit_sni_and_san_are_kept():
    rule = CNN_ORIGINATION.replace("tls: {mode: SIMPLE}",
                                   "tls: {mode: SIMPLE, sni: edition.cnn.com, "
                                   "subjectAltNames: [edition.cnn.com]}")
    tls = snapshot(SLEEP_PROXY, rule).clusters["outbound|80||edition.cnn.com"][
        "transport_socket"]["typed_config"]
    assert tls["sni"] == "edition.cnn.com"
    matchers = tls["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert matchers == [{"san_type": "DNS", "matcher": {"exact": "edition.cnn.com"}}]


# --- The egress gateway ---------------------------------------------------------------------

EGRESS_HTTP = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [edition.cnn.com]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-cnn}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets: [{name: cnn}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {number: 80}
      weight: 100
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 80}}
      weight: 100
"""
EGRESS_PASSTHROUGH = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway-tls}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [edition.cnn.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-tls}
spec:
  hosts: [edition.cnn.com]
  gateways: [mesh, istio-egressgateway-tls]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [edition.cnn.com]}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {number: 443}
  - match: [{gateways: [istio-egressgateway-tls], port: 443, sniHosts: [edition.cnn.com]}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 443}}
      weight: 100
"""


def test_http_goes_from_the_sidecar_to_the_egress_gateway_and_out():
    sidecar = snapshot(SLEEP_PROXY, EGRESS_HTTP)
    assert simulate(sidecar, http("edition.cnn.com", "/politics")).cluster == \
        "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local"
    gateway = snapshot(EGRESS, EGRESS_HTTP)
    result = simulate(gateway, Call(40180, "edition.cnn.com", "/politics"))
    assert result.cluster == "outbound|80||edition.cnn.com"
    assert endpoints(gateway, "outbound|80||edition.cnn.com") == [OUTSIDE.port]


def test_https_passes_through_the_egress_gateway_by_sni():
    docs = (EGRESS_HTTP, EGRESS_PASSTHROUGH)
    sidecar = snapshot(SLEEP_PROXY, *docs)
    assert simulate(sidecar, tunnel("edition.cnn.com:443")).cluster == \
        "outbound|443|cnn|istio-egressgateway.istio-system.svc.cluster.local"
    gateway = snapshot(EGRESS, *docs)
    listener = gateway.listeners["0.0.0.0_8443"]
    chains = {tuple(c["filter_chain_match"]["server_names"]):
              c["filters"][0]["typed_config"]["cluster"] for c in listener["filter_chains"]}
    assert chains == {("edition.cnn.com",): "outbound|443||edition.cnn.com"}


# --- Findings -----------------------------------------------------------------------------


def findings(*docs: str) -> list[tuple[str, str, str]]:
    resources = []
    for text in docs:
        resources += load(text, namespace=NS)
    store = ConfigStore.with_namespaces([NS]).with_applied(resources)
    return [(d.code, d.severity, d.field) for d in analyze(store) if d.code.startswith("LAB06")]


@pytest.mark.parametrize(("host", "problem"), [
    ("'*'", "LAB0601"), ("foo.*.com", "LAB0601"), ("bad_name.com", "LAB0601"),
])
def test_a_bad_host_is_refused_at_its_field(host, problem):
    entry = HTTPBIN.replace("hosts: [httpbin.org]", f"hosts: [httpbin.org, {host}]")
    assert (problem, "Error", "spec.hosts[1]") in findings(entry)


def test_duplicate_ports_are_refused():
    entry = HTTPBIN.replace("ports: [{number: 80, name: http, protocol: HTTP}]",
                            "ports: [{number: 80, name: http}, {number: 80, name: http}]")
    found = findings(entry)
    assert ("LAB0602", "Error", "spec.ports[1].number") in found
    assert ("LAB0602", "Error", "spec.ports[1].name") in found


@pytest.mark.parametrize(("change", "expected"), [
    ("resolution: STATIC", ("LAB0603", "Error", "spec.resolution")),
    ("resolution: DYNAMIC_DNS", ("LAB0608", "Error", "spec.resolution")),
])
def test_a_resolution_without_what_it_needs_is_refused(change, expected):
    assert expected in findings(HTTPBIN.replace("resolution: DNS", change))


def test_a_wildcard_cannot_be_resolved_by_dns():
    entry = HTTPBIN.replace("hosts: [httpbin.org]", "hosts: ['*.wikipedia.org']")
    assert ("LAB0603", "Error", "spec.hosts[0]") in findings(entry)


def test_unreachable_addresses_and_unserved_hosts_are_warned():
    entry = HTTPBIN.replace("hosts: [httpbin.org]", "hosts: [api.example.com]")
    assert ("LAB0605", "Warning", "spec.hosts[0]") in findings(entry)
    static = entry.replace("resolution: DNS",
                           "resolution: STATIC\n  endpoints: [{address: 10.0.0.5}]")
    assert ("LAB0604", "Warning", "spec.endpoints[0].address") in findings(static)


def test_untranslated_fields_are_warned_not_dropped():
    entry = HTTPBIN.replace("resolution: DNS",
                            "resolution: DNS\n  addresses: [240.0.0.1]\n"
                            "  subjectAltNames: [x]\n  workloadSelector: {labels: {a: b}}")
    found = {f for _, _, f in findings(entry)}
    assert {"spec.addresses", "spec.subjectAltNames", "spec.workloadSelector"} <= found
    sidecar = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 80, protocol: HTTP, name: http}
    hosts: ["./*"]
"""
    assert ("LAB0607", "Warning", "spec.egress[0].port") in findings(sidecar)


def test_the_istio_tasks_entries_have_no_findings():
    assert findings(HTTPBIN, GOOGLE, CNN_ORIGINATION) == []


def test_the_egress_gateway_routes_only_the_hosts_it_serves():
    with pytest.raises(ErrNoRoute):
        simulate(snapshot(EGRESS, EGRESS_HTTP), Call(40180, "www.google.com"))


# --- Telemetry ----------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "service", "name"), [
    ({"upstream_cluster": "outbound|443||edition.cnn.com", "authority": "edition.cnn.com:443",
      "method": "CONNECT"}, "edition.cnn.com", "edition.cnn.com"),
    ({"upstream_cluster": "PassthroughCluster", "authority": "httpbin.org", "method": "GET"},
     "httpbin.org", "PassthroughCluster"),
    ({"upstream_cluster": None, "route_name": "block_all", "authority": "httpbin.org",
      "method": "GET", "response_code": 502}, "httpbin.org", "BlackHoleCluster"),
    ({"upstream_cluster": "BlackHoleCluster", "authority": "www.google.com:443",
      "method": "CONNECT"}, "www.google.com", "BlackHoleCluster"),
])
def test_egress_is_reported_as_istio_reports_it(entry, service, name):
    from lablib.telemetry.labels import derive
    from lablib.telemetry.topology import ProxyInfo, Topology, WorkloadInfo

    sleep = WorkloadInfo("sleep", NS, "sleep-a", {"app": "sleep"}, "sleep")
    proxy = ProxyInfo(SLEEP_PROXY.id, "sidecar", sleep, "/dev/null", 15001)
    line = {"protocol": "HTTP/1.1", "downstream_local_address": "127.0.0.1:15001",
            "response_code": 200, **entry}
    labels = derive(line, proxy, Topology((proxy,)), {proxy.id: proxy}).labels
    assert labels["reporter"] == "source"
    assert (labels["destination_service"], labels["destination_service_name"]) == (service, name)
    assert labels["destination_workload"] == "unknown"


def test_an_entry_naming_a_service_leaves_the_service_alone():
    service = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 8000}]}
"""
    entry = HTTPBIN.replace("hosts: [httpbin.org]",
                            f"hosts: [web.{NS}.svc.cluster.local, HTTPBIN.org]")
    snap = snapshot(SLEEP_PROXY, service, entry)  # one virtual host per name, or Envoy refuses
    assert simulate(snap, http("web:8000")).cluster == \
        f"outbound|8000||web.{NS}.svc.cluster.local"
    assert simulate(snap, http("httpbin.org")).cluster == "outbound|80||httpbin.org"
    assert ("LAB0609", "Warning", "spec.hosts[0]") in findings(service, entry)


def test_a_root_namespace_sidecar_applies_mesh_wide_unless_a_namespace_has_its_own():
    root = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
    own = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"""
    assert simulate(snapshot(OTHER_PROXY, root), Call(15002, "httpbin.org")).direct_status == 502
    assert simulate(snapshot(SLEEP_PROXY, root, own), http("httpbin.org")).cluster == \
        "PassthroughCluster"


def test_sidecar_egress_hosts_must_name_a_namespace():
    sidecar = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - hosts: ["./*", "httpbin.org"]
"""
    assert findings(sidecar) == [("LAB0610", "Error", "spec.egress[0].hosts[1]")]


def test_subsets_of_two_rules_for_one_host_both_get_clusters():
    second = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-nginx}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets: [{name: nginx}]
"""
    snap = snapshot(SLEEP_PROXY, EGRESS_HTTP, second)  # the first rule defines subset cnn
    for subset in ("cnn", "nginx"):
        assert f"outbound|80|{subset}|istio-egressgateway.istio-system.svc.cluster.local" in \
            snap.clusters
