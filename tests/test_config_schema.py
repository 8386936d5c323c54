"""lablib.config.schema: strict structural validation of every supported kind."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lablib.config.model import Resource
from lablib.config.schema import KINDS, parse_duration, validate
from lablib.errors import Diagnostic


def resource(text: str) -> Resource:
    body = yaml.safe_load(text)
    namespace = "" if body["kind"] == "Namespace" else "bookinfo-test"
    return Resource(body["kind"], body["metadata"]["name"], namespace, body)


def problems(text: str) -> list[Diagnostic]:
    return validate(resource(text))


def only(text: str) -> Diagnostic:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def vs_route(route: str) -> str:
    """A VirtualService whose first http rule has `route` (indented list text)."""
    return ("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n"
            + route)


VALID = {
    "gateway-tls": """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
      minProtocolVersion: TLSV1_2
    hosts: [httpbin.example.com]
  - port: {number: 8080, name: http, protocol: http}
    hosts: ["*"]
    tls: {httpsRedirect: true}
""",
    "virtualservice-everything": """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ratings
  creationTimestamp: "2024-03-05T11:37:41Z"
  resourceVersion: "123"
spec:
  hosts: [ratings]
  exportTo: ["."]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /ratings}
      queryParams: {debug: {regex: "1|true"}}
      ignoreUriCase: true
      withoutHeaders: {x-skip: {exact: "1"}}
    fault:
      delay: {percentage: {value: 100.0}, fixedDelay: 7s}
      abort: {percentage: {value: 10}, httpStatus: 500}
    route:
    - destination: {host: ratings, subset: v1, port: {number: 9080}}
      weight: 80
      headers: {request: {set: {x-a: "1"}, remove: [x-b]}}
    - destination: {host: ratings, subset: v2}
      weight: 20
    timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}
    mirror: {host: ratings, subset: v2}
    mirrorPercentage: {value: 50}
    corsPolicy: {allowOrigins: [{exact: "https://example.com"}], maxAge: 24h}
    headers: {response: {add: {x-served-by: lab}}}
    rewrite: {uri: /, authority: ratings}
  - fault:
      delay: {percent: 100, fixedDelay: 2s}
    route:
    - destination: {host: ratings}
  - redirect: {uri: /new, redirectCode: 301, derivePort: FROM_REQUEST_PORT}
  - directResponse: {status: 418, body: {string: teapot}}
""",
    "virtualservice-tcp-tls": """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: nginx}
spec:
  hosts: [nginx.example.com]
  gateways: [mygateway, istio-system/other, mesh]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
  tcp:
  - match: [{port: 31400}]
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}
      weight: 80
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
      weight: 20
""",
    "destinationrule-circuit-breaker": """
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, h2UpgradePolicy: UPGRADE}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 0s}}
      localityLbSetting: {enabled: true, failover: [{from: us-east, to: us-west}]}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
""",
    "peerauthentication-port-level": """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: disable-peer-auth-for-external-mtls-port}
spec:
  selector:
    matchLabels: {app: httpbin}
  mtls: {mode: STRICT}
  portLevelMtls:
    9080: {mode: DISABLE}
""",
    "sidecar-ingress": """
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: ingress-sidecar}
spec:
  workloadSelector:
    labels: {app: httpbin, version: v1}
  ingress:
  - port: {number: 9443, protocol: HTTPS, name: external}
    defaultEndpoint: 0.0.0.0:80
    tls:
      mode: MUTUAL
      privateKey: /etc/istio/tls-certs/tls.key
      serverCertificate: /etc/istio/tls-certs/tls.crt
      caCertificates: /etc/istio/tls-ca-certs/ca.crt
  - port: {number: 9080, protocol: HTTP, name: internal}
    defaultEndpoint: 0.0.0.0:80
  egress:
  - hosts: ["./*", "istio-system/*"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
""",
    "serviceentry": """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints: [{address: 127.0.0.1, ports: {http: 8080}, labels: {app: ext}}]
""",
    "service-and-deployment": """
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin}
spec:
  replicas: 1
  selector: {matchLabels: {app: httpbin, version: v1}}
  template:
    metadata:
      labels: {app: httpbin, version: v1, sidecar.istio.io/inject: "true"}
      annotations:
        sidecar.istio.io/userVolumeMount: '{"tls-secret":{"mountPath":"/etc/istio/tls-certs/"}}'
    spec:
      serviceAccountName: httpbin
      containers:
      - image: docker.io/kennethreitz/httpbin
        imagePullPolicy: IfNotPresent
        name: httpbin
        ports: [{containerPort: 80}]
        env: [{name: PORT, value: "80"}]
        command: [gunicorn]
        args: [-b, 0.0.0.0:80]
        resources: {requests: {cpu: 10m, memory: 64Mi}, limits: {cpu: 1}}
        readinessProbe: {httpGet: {path: /status/200, port: 80}}
        volumeMounts: [{name: nginx-config, mountPath: /etc/nginx, readOnly: true}]
      volumes:
      - name: nginx-config
        configMap: {name: nginx-configmap}
""",
    "service": """
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin, service: httpbin}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ports:
  - {port: 443, name: https, targetPort: 9443}
  - {port: 80, name: http, targetPort: http-web, protocol: TCP, nodePort: 30080}
  selector: {app: httpbin}
""",
    "secret-and-configmap": """
apiVersion: v1
kind: Secret
metadata: {name: httpbin-credential}
type: kubernetes.io/tls
data: {tls.crt: aGVsbG8=, tls.key: d29ybGQ=}
stringData: {note: plain}
""",
    "configmap": """
apiVersion: v1
kind: ConfigMap
metadata: {name: nginx-configmap}
data: {nginx.conf: "events {}"}
""",
    "namespace": """
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo-test, labels: {istio-injection: enabled}}
""",
    "serviceaccount": """
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-details, labels: {account: details}}
""",
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_manifests_have_no_problems(name: str) -> None:
    assert problems(VALID[name]) == []


@pytest.mark.parametrize("kind, version", [(k, v) for k, vs in KINDS.items() for v in vs])
def test_every_documented_api_version_is_accepted(kind: str, version: str) -> None:
    body: dict[str, Any] = {"apiVersion": version, "kind": kind, "metadata": {"name": "x"}}
    spec = {"DestinationRule": {"host": "x"}, "ServiceEntry": {"hosts": ["x.example.com"]},
            "Deployment": {"selector": {}, "template": {"spec": {"containers": []}}}}
    if kind in spec:
        body["spec"] = spec[kind]
    assert validate(Resource(kind, "x", "ns", body)) == []


def test_unknown_field_suggests_the_right_one() -> None:
    found = only(vs_route("    - destination: {host: reviews}\n      weigth: 50\n"))
    assert (found.code, found.severity) == ("IST0106", "Error")
    assert found.resource == "VirtualService bookinfo-test/reviews"
    assert found.field == "spec.http[0].route[0].weigth"
    assert found.message == 'unknown field "weigth"; did you mean "weight"?'
    assert found.fix == 'rename "weigth" to "weight"'


def test_snake_case_and_wrong_case_fields_are_recognised() -> None:
    rule = VALID["destinationrule-circuit-breaker"]
    text = rule.replace("baseEjectionTime", "base_ejection_time")
    assert only(text).message.endswith('did you mean "baseEjectionTime"?')
    text = VALID["peerauthentication-port-level"].replace("mtls: {mode", "mTLS: {mode")
    assert only(text).message.endswith('did you mean "mtls"?')


def test_unknown_field_without_a_close_match_lists_the_allowed_ones() -> None:
    found = only(vs_route("    - destination: {host: reviews, banana: 1}\n"))
    assert found.message == 'unknown field "banana"'
    assert "host, port, subset" in found.fix


def test_weight_as_text_is_not_an_integer() -> None:
    found = only(vs_route('    - destination: {host: reviews}\n      weight: "abc"\n'))
    assert found.field == "spec.http[0].route[0].weight"
    assert found.message == 'expected integer, got string "abc"'
    quoted = only(vs_route('    - destination: {host: reviews}\n      weight: "80"\n'))
    assert quoted.message == 'expected integer, got string "80"'
    assert quoted.fix == "remove the quotes: weight: 80"


@pytest.mark.parametrize("value, shown", [("true", "boolean true"), ("50.5", "number 50.5"),
                                          ("[50]", "a list")])
def test_weight_must_be_a_whole_number(value: str, shown: str) -> None:
    found = only(vs_route(f"    - destination: {{host: reviews}}\n      weight: {value}\n"))
    assert found.message == f"expected integer, got {shown}"


def test_enums_are_checked_with_suggestions() -> None:
    found = only(VALID["peerauthentication-port-level"].replace("mode: STRICT", "mode: STRCT"))
    assert found.field == "spec.mtls.mode"
    assert found.message.startswith('invalid value "STRCT"; did you mean "STRICT"?')
    assert "UNSET, DISABLE, PERMISSIVE, STRICT" in found.message
    found = only(VALID["gateway-tls"].replace("mode: SIMPLE", "mode: ISTIO_MUTAL"))
    assert found.field == "spec.servers[0].tls.mode"
    found = only(VALID["destinationrule-circuit-breaker"].replace("LEAST_REQUEST", "LEAST"))
    assert found.field == "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple"
    found = only(VALID["destinationrule-circuit-breaker"].replace("ISTIO_MUTUAL", "PASSTHROUGH"))
    assert found.field == "spec.trafficPolicy.tls.mode"  # a Gateway mode, not a DR one


def test_port_protocols() -> None:
    assert problems(VALID["gateway-tls"].replace("protocol: http}", "protocol: GRPC}")) == []
    found = only(VALID["gateway-tls"].replace("protocol: http}", "protocol: HTTPX}"))
    assert found.field == "spec.servers[1].port.protocol"
    assert "HTTP, HTTPS, GRPC" in found.message


def test_durations() -> None:
    assert parse_duration("7s") == 7
    assert parse_duration("0.5s") == 0.5
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m") == 60
    assert parse_duration("1h") == 3600
    assert parse_duration("1m30s") == 90
    assert parse_duration("-2s") == -2
    for bad in ("7", "7 s", "s", "1d", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    found = only(VALID["virtualservice-everything"].replace("fixedDelay: 7s", "fixedDelay: 7"))
    assert found.message == "expected duration, got integer 7"
    assert '"7s"' in found.fix
    found = only(VALID["virtualservice-everything"].replace("timeout: 0.5s", "timeout: 5 sec"))
    assert (found.field, found.message) == ("spec.http[0].timeout", 'invalid duration "5 sec"')


def test_percentage_value_must_be_a_number() -> None:
    found = only(VALID["virtualservice-everything"].replace("value: 100.0", 'value: "100"'))
    assert found.field == "spec.http[0].fault.delay.percentage.value"
    assert found.message == 'expected number, got string "100"'


def test_oneof_and_required_fields() -> None:
    found = only(VALID["virtualservice-everything"].replace(
        "uri: {prefix: /ratings}", "uri: {prefix: /ratings, exact: /ratings}"))
    assert found.field == "spec.http[0].match[0].uri"
    assert "only one of exact, prefix, regex" in found.message
    found = only(vs_route("    - destination: {subset: v1}\n"))
    assert (found.field, found.message) == ("spec.http[0].route[0].destination.host",
                                            'missing required field "host"')
    found = only(vs_route("    - destination: {host: reviews}\n") + "    redirect: {uri: /x}\n")
    assert "only one of route, redirect, directResponse, delegate" in found.message


def test_an_http_rule_needs_somewhere_to_send_requests() -> None:
    text = vs_route("    - destination: {host: reviews}\n") + "  - match: [{uri: {exact: /}}]\n"
    found = only(text)
    assert (found.field, found.message) == (
        "spec.http[1]", "one of route, redirect, directResponse, delegate is required")


def test_a_list_written_as_a_scalar() -> None:
    found = only(VALID["gateway-tls"].replace("hosts: [httpbin.example.com]",
                                              "hosts: httpbin.example.com"))
    assert found.field == "spec.servers[0].hosts"
    assert found.message == 'expected a list, got string "httpbin.example.com"'


def test_kubernetes_kinds_use_lab0101() -> None:
    found = only(VALID["service"].replace("port: 443,", "port: 70000,"))
    assert (found.code, found.field) == ("LAB0101", "spec.ports[0].port")
    assert found.message == "port 70000 is out of range 1-65535"


def test_label_and_env_values_must_be_strings() -> None:
    deployment = VALID["service-and-deployment"]
    found = only(deployment.replace("version: v1, sidecar", "version: 1, sidecar"))
    assert found.field == 'spec.template.metadata.labels.version'
    assert found.message == "expected string, got integer 1"
    assert found.fix == 'quote it: version: "1"'
    found = only(deployment.replace('value: "80"', "value: 80"))
    assert found.field == "spec.template.spec.containers[0].env[0].value"


def test_deployment_requires_its_containers_image() -> None:
    found = only(VALID["service-and-deployment"].replace(
        "      - image: docker.io/kennethreitz/httpbin\n", "      - \n"))
    assert found.field == "spec.template.spec.containers[0].image"


def test_service_with_several_ports_must_name_them() -> None:
    found = only(VALID["service"].replace("port: 443, name: https, ", "port: 443, "))
    assert (found.field, found.message) == (
        "spec.ports[0].name", "a Service with several ports must name each of them")


def test_peer_authentication_port_level_mtls_needs_a_selector_and_port_keys() -> None:
    text = VALID["peerauthentication-port-level"]
    found = only(text.replace("  selector:\n    matchLabels: {app: httpbin}\n", ""))
    assert (found.field, found.message) == ("spec.portLevelMtls",
                                            "portLevelMtls requires a selector")
    found = only(text.replace("9080: {mode", "http: {mode"))
    assert found.field == "spec.portLevelMtls.http"


def test_secret_data_must_be_base64() -> None:
    found = only(VALID["secret-and-configmap"].replace("aGVsbG8=", "not base64!"))
    assert found.field == 'data["tls.crt"]'
    assert found.message == "illegal base64 data"


def test_names_must_be_dns_labels() -> None:
    found = only(VALID["serviceaccount"].replace("name: bookinfo-details", "name: Bookinfo_X"))
    assert found.field == "metadata.name"
    assert '"bookinfo-x"' in found.fix


def test_status_is_tolerated_but_typos_at_the_top_are_not() -> None:
    assert problems(VALID["namespace"] + "status: {phase: Active}\n") == []
    found = only(VALID["namespace"] + "spce: {}\n")
    assert found.message == 'unknown field "spce"; did you mean "spec"?'


def test_unsupported_kind_through_validate() -> None:
    body: dict[str, Any] = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                            "metadata": {"name": "deny"}}
    [found] = validate(Resource("WasmPlugin", "deny", "ns", body))
    assert found.code == "LAB0405"
    assert "WasmPlugin (extensions.istio.io) is not served by the local mesh yet" \
        in found.message
