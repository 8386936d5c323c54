"""lablib.config.analyze: istioctl-analyze-style checks over a whole store."""

from __future__ import annotations

import pytest

from lablib.config import ConfigStore, analyze, errors, load
from lablib.config.hosts import canonical_host, fqdn, port_protocol, resolve_host
from lablib.errors import Diagnostic

NS = "bookinfo-test"

INGRESS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {matchLabels: {app: istio-ingressgateway, istio: ingressgateway}}
  template:
    metadata: {labels: {app: istio-ingressgateway, istio: ingressgateway}}
    spec:
      containers:
      - name: istio-proxy
        image: docker.io/istio/proxyv2:1.20.3
        ports: [{containerPort: 15021}, {containerPort: 8080}, {containerPort: 8443},
                {containerPort: 31400}, {containerPort: 15443}]
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  type: LoadBalancer
  selector: {app: istio-ingressgateway, istio: ingressgateway}
  ports:
  - {name: status-port, port: 15021, targetPort: 15021}
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
  - {name: tcp, port: 31400, targetPort: 31400}
  - {name: tls, port: 15443, targetPort: 15443}
"""


def _service(name: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, labels: {{app: {name}, service: {name}}}}}
spec:
  ports: [{{port: 9080, name: http}}]
  selector: {{app: {name}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: bookinfo-{name}}}
"""


def _deployment(name: str, version: str) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}-{version}, labels: {{app: {name}, version: {version}}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}, version: {version}}}}}
  template:
    metadata: {{labels: {{app: {name}, version: {version}}}}}
    spec:
      serviceAccountName: bookinfo-{name}
      containers:
      - name: {name}
        image: docker.io/istio/examples-bookinfo-{name}-{version}:1.18.0
        ports: [{{containerPort: 9080}}]
"""


BOOKINFO = "---".join([
    _service("details"), _deployment("details", "v1"),
    _service("ratings"), _deployment("ratings", "v1"),
    _service("reviews"), _deployment("reviews", "v1"), _deployment("reviews", "v2"),
    _deployment("reviews", "v3"),
    _service("productpage"), _deployment("productpage", "v1"),
])

GATEWAY = """
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
  - match: [{uri: {exact: /productpage}}, {uri: {prefix: /static}}]
    route:
    - destination: {host: productpage, port: {number: 9080}}
"""

DESTINATION_RULES = "---".join(f"""
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {name}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
""" for name in ("reviews", "ratings"))


def reviews_split(*weights: int | None, host: str = "reviews") -> str:
    """The reviews VirtualService sending to subsets v1, v2... with these weights."""
    route = ""
    for i, weight in enumerate(weights):
        route += f"    - destination: {{host: {host}, subset: v{i + 1}}}\n"
        if weight is not None:
            route += f"      weight: {weight}\n"
    return ("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n"
            f"metadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n{route}")


def bookinfo(*extra: str, injected: bool = True) -> ConfigStore:
    """The walkthrough's Bookinfo: ingress gateway, app, gateway, DestinationRules, `extra`."""
    labels = {"istio-injection": "enabled"} if injected else {}
    store = ConfigStore.with_namespaces({"istio-system": {}, "default": {}, NS: labels})
    store = store.with_applied(load(INGRESS))
    return store.with_applied(load([BOOKINFO, GATEWAY, DESTINATION_RULES, *extra], namespace=NS))


def codes(store: ConfigStore) -> list[str]:
    return [d.code for d in analyze(store)]


def find(store: ConfigStore, code: str) -> Diagnostic:
    found = [d for d in analyze(store) if d.code == code]
    assert len(found) == 1, analyze(store)
    return found[0]


def test_walkthrough_bookinfo_is_clean() -> None:
    assert analyze(bookinfo(reviews_split(50, 50))) == []
    assert analyze(bookinfo(reviews_split(None))) == []  # a lone destination gets 100


def test_weights_must_sum_to_100() -> None:
    found = find(bookinfo(reviews_split(50, 40)), "LAB0201")
    assert (found.severity, found.resource) == ("Error", f"VirtualService {NS}/reviews")
    assert found.field == "spec.http[0].route"
    assert found.fix == "make the weights of spec.http[0].route sum to 100 (now 90)"
    assert errors(analyze(bookinfo(reviews_split(50, 40)))) == [found]


def test_unset_weights_count_as_zero_next_to_others() -> None:
    found = find(bookinfo(reviews_split(80, None)), "LAB0201")
    assert "1 destination(s) without a weight count as 0" in found.message


def test_negative_weight() -> None:
    store = bookinfo(reviews_split(110, -10))
    assert codes(store) == ["LAB0202"]
    assert find(store, "LAB0202").field == "spec.http[0].route[1].weight"


def test_subset_not_defined() -> None:
    found = find(bookinfo(reviews_split(50, 25, 25, 0)), "IST0101")
    assert found.field == "spec.http[0].route[3].destination.subset"
    assert found.message == 'Referenced host+subset in destinationrule not found: "reviews+v4"'
    assert "(defined: v1, v2, v3)" in found.fix


def test_subset_without_any_destination_rule() -> None:
    text = reviews_split(None).replace("host: reviews, subset: v1", "host: details, subset: v1")
    found = find(bookinfo(text), "IST0101")
    assert found.message == 'Referenced host+subset in destinationrule not found: "details+v1"'


def test_destination_host_that_is_no_service() -> None:
    store = bookinfo(reviews_split(None).replace("host: reviews, subset", "host: reveiws, subset"))
    found = find(store, "IST0101")
    assert found.field == "spec.http[0].route[0].destination.host"
    assert found.message == 'Referenced host not found: "reveiws"'


@pytest.mark.parametrize("host", ["reviews", f"reviews.{NS}", f"reviews.{NS}.svc",
                                  f"reviews.{NS}.svc.cluster.local"])
def test_host_forms_that_name_a_service(host: str) -> None:
    assert analyze(bookinfo(reviews_split(None, host=host))) == []


def test_short_names_do_not_cross_namespaces() -> None:
    store = bookinfo().with_applied(load(reviews_split(None), namespace="default"))
    messages = [d.message for d in analyze(store) if d.code == "IST0101"]
    assert messages == ['Referenced host not found: "reviews"'] * 2  # spec.hosts and destination


def test_mesh_virtual_service_host_must_exist() -> None:
    store = bookinfo(reviews_split(None).replace("hosts: [reviews]", "hosts: [reviewz]"))
    found = find(store, "IST0101")
    assert (found.field, found.message) == ("spec.hosts[0]", 'Referenced host not found: "reviewz"')


def test_gateway_bound_hosts_may_be_external_names() -> None:
    text = GATEWAY.split("---")[1].replace('hosts: ["*"]', "hosts: [bookinfo.example.com]")
    assert analyze(bookinfo(text)) == []


def test_missing_namespace() -> None:
    store = bookinfo().with_applied(load(reviews_split(None), namespace="nowhere"))
    found = [d for d in analyze(store) if d.code == "LAB0204"]
    assert [(d.resource, d.fix) for d in found] == [
        ("VirtualService nowhere/reviews", "kubectl create namespace nowhere")]


def test_gateway_not_found() -> None:
    vs = GATEWAY.split("---")[1]
    found = find(bookinfo(vs.replace("[bookinfo-gateway]", "[bookinfo-gw]")), "IST0101")
    assert (found.field, found.message) == ("spec.gateways[0]",
                                            'Referenced gateway not found: "bookinfo-gw"')
    other_ns = vs.replace("[bookinfo-gateway]", f"[{NS}/bookinfo-gateway, mesh]")
    assert codes(bookinfo(other_ns.replace('hosts: ["*"]', "hosts: [productpage]"))) == []
    wrong_ns = vs.replace("[bookinfo-gateway]", "[istio-system/bookinfo-gateway]")
    assert codes(bookinfo(wrong_ns)) == ["IST0101"]


def test_gateway_selector_matching_no_workload() -> None:
    store = bookinfo(GATEWAY.replace("istio: ingressgateway", "istio: ingress"))
    found = find(store, "LAB0203")
    assert (found.severity, found.field) == ("Error", "spec.selector")
    assert "istio: ingressgateway" in found.fix


def test_gateway_port_must_be_exposed_by_the_gateway_service() -> None:
    for port in (80, 8080, 31400):
        assert analyze(bookinfo(GATEWAY.replace("number: 8080", f"number: {port}"))) == []
    found = find(bookinfo(GATEWAY.replace("number: 8080", "number: 3000")), "IST0104")
    assert (found.severity, found.field) == ("Warning", "spec.servers[0].port.number")
    assert "port 3000" in found.message
    assert "80->8080" in found.fix
    assert errors(analyze(bookinfo(GATEWAY.replace("number: 8080", "number: 3000")))) == []


def test_namespace_not_injected_is_information() -> None:
    found = find(bookinfo(injected=False), "IST0102")
    assert (found.severity, found.resource) == ("Info", f"Namespace {NS}")
    assert found.fix.startswith(f"kubectl label namespace {NS} istio-injection=enabled")


def test_destination_rule_checks() -> None:
    text = DESTINATION_RULES.split("---")[0]
    store = bookinfo(text.replace("host: reviews", "host: reviewz").replace("name: reviews",
                                                                           "name: other"))
    assert find(store, "IST0101").field == "spec.host"
    found = find(bookinfo(text.replace("name: v3,", "name: v2,")), "LAB0208")
    assert (found.field, found.message) == ("spec.subsets[2].name", 'duplicate subset name "v2"')
    # Subsets without pods are fine (Bookinfo's own ratings v2-mysql has none)...
    assert analyze(bookinfo(text.replace("version: v3", "version: v4"))) == []
    # ...until a route sends requests to one.
    store = bookinfo(text.replace("version: v3", "version: v4"), reviews_split(0, 50, 50))
    found = find(store, "LAB0214")
    assert (found.severity, found.resource) == ("Warning", f"VirtualService {NS}/reviews")
    assert found.field == "spec.http[0].route[2].destination.subset"


CIRCUIT_BREAKER = """
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m,
                       maxEjectionPercent: 100}
"""


def test_connection_pool_limits() -> None:
    assert analyze(bookinfo(CIRCUIT_BREAKER)) == []
    found = find(bookinfo(CIRCUIT_BREAKER.replace("maxConnections: 1", "maxConnections: 0")),
                 "LAB0211")
    assert found.field == "spec.trafficPolicy.connectionPool.tcp.maxConnections"
    assert found.message.startswith("maxConnections must be >= 1")
    text = CIRCUIT_BREAKER.replace("maxRequestsPerConnection: 1", "maxRequestsPerConnection: 0")
    assert analyze(bookinfo(text)) == []  # 0 means unlimited keep-alive, which is fine
    text = CIRCUIT_BREAKER.replace("maxEjectionPercent: 100", "maxEjectionPercent: 120")
    assert find(bookinfo(text), "LAB0209").field == (
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent")


RATINGS_FAULT = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault:
      delay: {percentage: {value: 100.0}, fixedDelay: 7s}
    route:
    - destination: {host: ratings, subset: v1}
    timeout: 0.5s
  - route:
    - destination: {host: ratings, subset: v1}
"""


def test_fault_percentages_and_durations() -> None:
    assert analyze(bookinfo(RATINGS_FAULT)) == []
    found = find(bookinfo(RATINGS_FAULT.replace("value: 100.0", "value: 150")), "LAB0209")
    assert found.field == "spec.http[0].fault.delay.percentage.value"
    found = find(bookinfo(RATINGS_FAULT.replace("timeout: 0.5s", "timeout: -1s")), "LAB0210")
    assert (found.field, found.message) == ("spec.http[0].timeout",
                                            "timeout -1s must not be negative")
    assert analyze(bookinfo(RATINGS_FAULT.replace("timeout: 0.5s", "timeout: 0s"))) == []
    found = find(bookinfo(RATINGS_FAULT.replace("fixedDelay: 7s", "fixedDelay: 0s")), "LAB0210")
    assert found.field == "spec.http[0].fault.delay.fixedDelay"


TCP_ECHO = """
apiVersion: v1
kind: Service
metadata: {name: tcp-echo}
spec:
  ports: [{name: tcp, port: 9000}, {name: tcp-other, port: 9001}]
  selector: {app: tcp-echo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tcp-echo-v1}
spec:
  selector: {matchLabels: {app: tcp-echo, version: v1}}
  template:
    metadata: {labels: {app: tcp-echo, version: v1}}
    spec:
      containers:
      - {name: tcp-echo, image: docker.io/istio/tcp-echo-server:1.2,
         ports: [{containerPort: 9000}, {containerPort: 9001}]}
---
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
metadata: {name: tcp-echo-destination}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}]
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
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}
"""


def test_tcp_routes_and_http_ports() -> None:
    assert analyze(bookinfo(TCP_ECHO)) == []
    to_http = TCP_ECHO.replace("host: tcp-echo, port: {number: 9000}, subset: v1",
                               "host: details, port: {number: 9080}")
    found = find(bookinfo(to_http), "LAB0212")
    assert found.field == "spec.tcp[0].route[0].destination"
    assert "HTTP port" in found.message
    mesh = ("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n"
            "metadata: {name: details-tcp}\nspec:\n  hosts: [details]\n  tcp:\n"
            "  - match: [{port: 9080}]\n    route:\n    - destination: {host: tcp-echo}\n")
    found = find(bookinfo(TCP_ECHO, mesh), "LAB0212")
    assert found.field == "spec.tcp[0].match[0].port"
    assert 'an HTTP port of Service bookinfo-test/details (named "http")' in found.message
    on_http_server = TCP_ECHO.replace("number: 31400, name: tcp, protocol: TCP",
                                      "number: 31400, name: http, protocol: HTTP")
    assert "LAB0212" in codes(bookinfo(on_http_server))


def test_destination_port_must_be_on_the_service() -> None:
    text = GATEWAY.replace("number: 9080}}", "number: 9000}}")
    found = find(bookinfo(text), "LAB0215")
    assert found.field == "spec.http[0].route[0].destination.port.number"
    assert "its ports: 9080" in found.message


def test_conflicting_virtual_services() -> None:
    twin = reviews_split(None).replace("name: reviews}", "name: reviews-copy}")
    found = [d for d in analyze(bookinfo(reviews_split(None), twin)) if d.code == "IST0109"]
    assert [d.resource for d in found] == [f"VirtualService {NS}/reviews",
                                           f"VirtualService {NS}/reviews-copy"]
    assert all(d.severity == "Error" for d in found)
    # Spelling the host differently does not avoid the conflict.
    fqdn_twin = twin.replace("hosts: [reviews]", f"hosts: [reviews.{NS}.svc.cluster.local]")
    assert "IST0109" in codes(bookinfo(reviews_split(None), fqdn_twin))
    gateway_twin = GATEWAY.split("---")[1].replace("name: bookinfo}", "name: bookinfo-2}")
    found = [d for d in analyze(bookinfo(gateway_twin)) if d.code == "LAB0213"]
    assert [d.severity for d in found] == ["Warning", "Warning"]


def test_workload_checks() -> None:
    broken = _deployment("ratings", "v2").replace(
        "metadata: {labels: {app: ratings, version: v2}}", "metadata: {labels: {app: ratings}}")
    found = find(bookinfo(broken), "LAB0205")
    assert "version=v2" in found.fix
    moved = _service("ratings").replace("name: http}", "name: http, targetPort: 8080}")
    found = find(bookinfo(moved), "LAB0206")
    assert (found.severity, found.field) == ("Warning", "spec.ports[0].targetPort")
    policy = ("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: strict}\nspec:\n  selector: {matchLabels: {app: reviewz}}\n"
              "  mtls: {mode: STRICT}\n")
    found = find(bookinfo(policy), "LAB0207")
    assert (found.severity, found.field) == ("Warning", "spec.selector.matchLabels")


def test_pods_that_declare_no_ports_are_not_second_guessed() -> None:
    # Istio's sleep sample: Service port 80, a container without any `ports:`.
    quiet = _deployment("ratings", "v2").replace("        ports: [{containerPort: 9080}]\n", "")
    service = _service("ratings").replace("{port: 9080, name: http}", "{port: 80, name: http}")
    store = bookinfo(service, quiet)
    assert "LAB0206" in codes(store)  # ratings-v1 still declares 9080
    store = store.without([("Deployment", NS, "ratings-v1")])
    assert "LAB0206" not in codes(store)


def test_sidecar_ingress_ports_count_as_exposed() -> None:
    service = _service("ratings").replace("{port: 9080, name: http}",
                                          "{port: 9080, name: http, targetPort: 9443}")
    sidecar = ("apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\n"
               "metadata: {name: ingress-sidecar}\nspec:\n"
               "  workloadSelector: {labels: {app: ratings}}\n  ingress:\n"
               "  - port: {number: 9443, protocol: HTTPS, name: external}\n"
               "    defaultEndpoint: 0.0.0.0:9080\n")
    assert analyze(bookinfo(service, sidecar)) == []


def test_host_helpers() -> None:
    store = bookinfo(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\n"
        "spec:\n  hosts: ['*.example.com', httpbin.org]\n  ports: [{number: 80, name: http}]\n")
    assert fqdn("reviews", NS) == f"reviews.{NS}.svc.cluster.local"
    assert fqdn("httpbin.org", NS) == "httpbin.org"
    service = resolve_host(store, f"reviews.{NS}", "default")
    assert service is not None and service.key == ("Service", NS, "reviews")
    assert resolve_host(store, "reviews", "default") is None
    entry = resolve_host(store, "api.example.com", "default")
    assert entry is not None and entry.kind == "ServiceEntry"
    assert canonical_host(store, f"reviews.{NS}.svc", "x") == f"reviews.{NS}.svc.cluster.local"
    assert port_protocol({"name": "http-web", "port": 80}) == "HTTP"
    assert port_protocol({"name": "grpc-web", "port": 80}) == "GRPC-WEB"
    assert port_protocol({"name": "web", "port": 80, "appProtocol": "http2"}) == "HTTP2"
    assert port_protocol({"port": 80}) == ""
