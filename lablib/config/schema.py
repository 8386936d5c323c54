"""Strict structural validation of the manifests the kit understands.

Each kind has a small declarative schema (nested `Obj`/`ListOf`/`MapOf`/`Enum` and scalar
type names) mirroring the Kubernetes API and Istio's CRDs as documented at istio.io.
`validate(resource)` walks a manifest against it and returns one Diagnostic per problem:
unknown fields (with a "did you mean"), wrong types (`weight: "80"` is a string, not an
integer, exactly as the API server sees it), bad enum values and missing required fields.
Cross-resource checks (hosts, subsets, weights summing to 100...) live in `analyze.py`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ..errors import Diagnostic
from . import security
from .limits import object_rules
from .model import Resource

__all__ = [
    "KINDS",
    "ISTIO_KINDS",
    "PREFERRED_VERSION",
    "check_kind",
    "field_path",
    "item_path",
    "parse_duration",
    "schema_code",
    "validate",
]

NETWORKING = (
    "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3",
)
SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
TELEMETRY = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")

# kind -> apiVersions the kit accepts for it.
KINDS: dict[str, tuple[str, ...]] = {
    "Namespace": ("v1",),
    "Service": ("v1",),
    "ServiceAccount": ("v1",),
    "Secret": ("v1",),
    "ConfigMap": ("v1",),
    "Deployment": ("apps/v1",),
    "Gateway": NETWORKING,
    "VirtualService": NETWORKING,
    "DestinationRule": NETWORKING,
    "Sidecar": NETWORKING,
    "ServiceEntry": NETWORKING,
    "PeerAuthentication": SECURITY,
    "Telemetry": TELEMETRY,
    "AuthorizationPolicy": SECURITY,
    "RequestAuthentication": SECURITY,
}
ISTIO_KINDS = frozenset(k for k, versions in KINDS.items() if ".istio.io/" in versions[0])
# The version the API server returns an object at, whatever version it was applied with (it
# converts on read): Istio 1.20's preferred versions, the release the kit emulates (v1 became
# preferred in 1.22).
PREFERRED_VERSION: dict[str, str] = {
    kind: next((v for v in versions if v.endswith("/v1beta1")), versions[0])
    for kind, versions in KINDS.items()}

SCHEMA_CODE_KUBE = "LAB0101"
SCHEMA_CODE_ISTIO = "IST0106"  # Istio's SchemaValidationError
UNKNOWN_KIND_CODE = "LAB0102"


# --- Durations ---------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_RE = re.compile(r"([+-]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|0)")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in an Istio/Go duration such as `7s`, `0.5s`, `100ms`, `1m30s`, `-1s`."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like \"5s\", got {_describe(text)}")
    match = _DURATION_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f'invalid duration "{text}": use a number and a unit, like 5s or 100ms')
    sign, body = match.groups()
    seconds = sum((float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body)), 0.0)
    return -seconds if sign == "-" else seconds


# --- Schema vocabulary -------------------------------------------------------------------

# Scalar type names.
STR, INT, UINT, PORT, BOOL, NUMBER = "string", "integer", "uint", "port", "boolean", "number"
DURATION, INT_OR_STR, QUANTITY, BASE64, ANY, ANY_MAP = (
    "duration", "int-or-string", "quantity", "base64", "any", "any-map",
)
INT64, HEADER_NAME, HEADER_VALUE = "int64", "header-name", "header-value"

# INT is protobuf's and Kubernetes' int32, UINT is uint32: a larger number fails to parse.
_INT_RANGES = {INT: (-(2**31), 2**31 - 1), UINT: (0, 2**32 - 1), INT64: (-(2**63), 2**63 - 1)}
# Istio reads durations with Go's time.ParseDuration: an int64 of nanoseconds, ~292 years.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
# An HTTP header name is an RFC 7230 token (Istio's pseudo-headers such as ":authority" keep
# their colon); a value may hold no CR, LF or NUL, which would split or end the header.
_HEADER_TOKEN = re.compile(r":?[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True)
class Obj:
    """A mapping with known fields; `oneof` groups allow at most one member to be set."""

    fields: Mapping[str, Spec]
    required: tuple[str, ...] = ()
    oneof: tuple[tuple[str, ...], ...] = ()
    need_one: tuple[str, ...] = ()  # at least one of these must be set
    open: bool = False  # tolerate fields not listed (Kubernetes metadata, volume sources)


@dataclass(frozen=True)
class ListOf:
    item: Spec


@dataclass(frozen=True)
class MapOf:
    value: Spec
    key: str = STR  # PORT for PeerAuthentication.portLevelMtls, HEADER_NAME for headers


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]
    ignore_case: bool = False


Spec: TypeAlias = "str | Obj | ListOf | MapOf | Enum"


@dataclass(frozen=True)
class _Problem:
    path: str
    message: str
    fix: str = ""


@dataclass
class _Walk:
    problems: list[_Problem] = field(default_factory=list)

    def add(self, path: str, message: str, fix: str = "") -> None:
        self.problems.append(_Problem(path, message, fix))


# --- Kubernetes schemas ------------------------------------------------------------------

_STRINGS = ListOf(STR)
_LABELS = MapOf(STR)
_OBJECT_META = Obj(
    {"name": STR, "namespace": STR, "labels": _LABELS, "annotations": _LABELS,
     "generateName": STR},
    open=True,  # creationTimestamp, uid, resourceVersion... as kubectl get -o yaml shows them
)
_LABEL_SELECTOR = Obj({
    "matchLabels": _LABELS,
    "matchExpressions": ListOf(Obj(
        {"key": STR, "operator": Enum(("In", "NotIn", "Exists", "DoesNotExist")),
         "values": _STRINGS},
        required=("key", "operator"),
    )),
})
_KUBE_PROTOCOL = Enum(("TCP", "UDP", "SCTP"))

_SERVICE_PORT = Obj(
    {"name": STR, "port": PORT, "targetPort": INT_OR_STR, "protocol": _KUBE_PROTOCOL,
     "nodePort": PORT, "appProtocol": STR},
    required=("port",),
)
_SERVICE_SPEC = Obj({
    "type": Enum(("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")),
    "selector": _LABELS,
    "ports": ListOf(_SERVICE_PORT),
    "clusterIP": STR,
    "clusterIPs": _STRINGS,
    "externalTrafficPolicy": Enum(("Cluster", "Local")),
    "internalTrafficPolicy": Enum(("Cluster", "Local")),
    "sessionAffinity": Enum(("None", "ClientIP")),
    "sessionAffinityConfig": ANY_MAP,
    "externalName": STR,
    "externalIPs": _STRINGS,
    "loadBalancerIP": STR,
    "loadBalancerSourceRanges": _STRINGS,
    "loadBalancerClass": STR,
    "ipFamilies": _STRINGS,
    "ipFamilyPolicy": Enum(("SingleStack", "PreferDualStack", "RequireDualStack")),
    "publishNotReadyAddresses": BOOL,
    "allocateLoadBalancerNodePorts": BOOL,
    "healthCheckNodePort": PORT,
    "trafficDistribution": STR,
})

_CONTAINER = Obj(
    {
        "name": STR,
        "image": STR,
        "imagePullPolicy": Enum(("Always", "IfNotPresent", "Never")),
        "command": _STRINGS,
        "args": _STRINGS,
        "workingDir": STR,
        "ports": ListOf(Obj(
            {"containerPort": PORT, "name": STR, "protocol": _KUBE_PROTOCOL, "hostPort": PORT,
             "hostIP": STR},
            required=("containerPort",),
        )),
        "env": ListOf(Obj({"name": STR, "value": STR, "valueFrom": ANY_MAP}, required=("name",))),
        "envFrom": ListOf(ANY_MAP),
        "resources": Obj({"limits": MapOf(QUANTITY), "requests": MapOf(QUANTITY),
                          "claims": ListOf(ANY_MAP)}),
        "securityContext": ANY_MAP,
        "volumeMounts": ListOf(Obj(
            {"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR,
             "subPathExpr": STR, "mountPropagation": STR, "recursiveReadOnly": STR},
            required=("name", "mountPath"),
        )),
        "volumeDevices": ListOf(ANY_MAP),
        "readinessProbe": ANY_MAP,
        "livenessProbe": ANY_MAP,
        "startupProbe": ANY_MAP,
        "lifecycle": ANY_MAP,
        "stdin": BOOL,
        "stdinOnce": BOOL,
        "tty": BOOL,
        "terminationMessagePath": STR,
        "terminationMessagePolicy": Enum(("File", "FallbackToLogsOnError")),
        "restartPolicy": STR,
        "resizePolicy": ListOf(ANY_MAP),
    },
    required=("name", "image"),
)
_POD_SPEC = Obj(
    {
        "containers": ListOf(_CONTAINER),
        "initContainers": ListOf(_CONTAINER),
        "ephemeralContainers": ListOf(ANY_MAP),
        "volumes": ListOf(Obj({"name": STR}, required=("name",), open=True)),
        "serviceAccountName": STR,
        "serviceAccount": STR,
        "automountServiceAccountToken": BOOL,
        "nodeSelector": _LABELS,
        "nodeName": STR,
        "affinity": ANY_MAP,
        "tolerations": ListOf(ANY_MAP),
        "securityContext": ANY_MAP,
        "restartPolicy": Enum(("Always", "OnFailure", "Never")),
        "terminationGracePeriodSeconds": INT64,
        "activeDeadlineSeconds": INT64,
        "dnsPolicy": Enum(("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")),
        "dnsConfig": ANY_MAP,
        "hostNetwork": BOOL,
        "hostPID": BOOL,
        "hostIPC": BOOL,
        "hostUsers": BOOL,
        "shareProcessNamespace": BOOL,
        "hostname": STR,
        "subdomain": STR,
        "setHostnameAsFQDN": BOOL,
        "hostAliases": ListOf(ANY_MAP),
        "imagePullSecrets": ListOf(ANY_MAP),
        "priorityClassName": STR,
        "priority": INT,
        "preemptionPolicy": STR,
        "schedulerName": STR,
        "topologySpreadConstraints": ListOf(ANY_MAP),
        "runtimeClassName": STR,
        "enableServiceLinks": BOOL,
        "overhead": ANY_MAP,
        "readinessGates": ListOf(ANY_MAP),
        "os": ANY_MAP,
        "schedulingGates": ListOf(ANY_MAP),
        "resourceClaims": ListOf(ANY_MAP),
        "resources": ANY_MAP,
    },
    required=("containers",),
)
_DEPLOYMENT_SPEC = Obj(
    {
        "replicas": INT,
        "selector": _LABEL_SELECTOR,
        "template": Obj({"metadata": _OBJECT_META, "spec": _POD_SPEC}, required=("spec",)),
        "strategy": ANY_MAP,
        "minReadySeconds": INT,
        "revisionHistoryLimit": INT,
        "progressDeadlineSeconds": INT,
        "paused": BOOL,
    },
    required=("selector", "template"),
)

# --- Istio schemas -----------------------------------------------------------------------

_PROTOCOL = Enum(("HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS"),
                 ignore_case=True)  # Istio parses protocols case-insensitively
_STRING_MATCH = Obj({"exact": STR, "prefix": STR, "regex": STR},
                    oneof=(("exact", "prefix", "regex"),))
_PORT_SELECTOR = Obj({"number": PORT})
_DESTINATION = Obj({"host": STR, "subset": STR, "port": _PORT_SELECTOR}, required=("host",))
_PERCENT = Obj({"value": NUMBER})
_HEADER_MAP = MapOf(HEADER_VALUE, key=HEADER_NAME)
_HEADER_OPERATIONS = Obj({"set": _HEADER_MAP, "add": _HEADER_MAP, "remove": ListOf(HEADER_NAME)})
_HEADERS = Obj({"request": _HEADER_OPERATIONS, "response": _HEADER_OPERATIONS})

_HTTP_MATCH = Obj({
    "name": STR,
    "uri": _STRING_MATCH,
    "scheme": _STRING_MATCH,
    "method": _STRING_MATCH,
    "authority": _STRING_MATCH,
    "headers": MapOf(_STRING_MATCH, key=HEADER_NAME),
    "withoutHeaders": MapOf(_STRING_MATCH, key=HEADER_NAME),
    "port": PORT,
    "sourceLabels": _LABELS,
    "gateways": _STRINGS,
    "queryParams": MapOf(_STRING_MATCH),
    "ignoreUriCase": BOOL,
    "sourceNamespace": STR,
    "statPrefix": STR,
})
_HTTP_ROUTE = Obj(
    {
        "name": STR,
        "match": ListOf(_HTTP_MATCH),
        "route": ListOf(Obj({"destination": _DESTINATION, "weight": INT, "headers": _HEADERS},
                            required=("destination",))),
        "redirect": Obj(
            {"uri": STR, "authority": STR, "port": PORT,
             "derivePort": Enum(("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")),
             "scheme": STR, "redirectCode": UINT, "prefixRewrite": STR},
            oneof=(("port", "derivePort"),),
        ),
        "directResponse": Obj(
            {"status": UINT,
             "body": Obj({"string": STR, "bytes": BASE64}, oneof=(("string", "bytes"),))},
            required=("status",),
        ),
        "delegate": Obj({"name": STR, "namespace": STR}),
        "rewrite": Obj({"uri": STR, "authority": STR,
                        "uriRegexRewrite": Obj({"match": STR, "rewrite": STR})}),
        "timeout": DURATION,
        "retries": Obj({"attempts": INT, "perTryTimeout": DURATION, "retryOn": STR,
                        "retryRemoteLocalities": BOOL, "retryIgnorePreviousHosts": BOOL,
                        "backoff": DURATION}),
        "fault": Obj({
            "delay": Obj({"percent": INT, "fixedDelay": DURATION, "exponentialDelay": DURATION,
                          "percentage": _PERCENT},
                         oneof=(("fixedDelay", "exponentialDelay"),)),
            "abort": Obj({"httpStatus": INT, "grpcStatus": STR, "http2Error": STR,
                          "percentage": _PERCENT},
                         oneof=(("httpStatus", "grpcStatus", "http2Error"),)),
        }),
        "mirror": _DESTINATION,
        "mirrors": ListOf(Obj({"destination": _DESTINATION, "percentage": _PERCENT},
                              required=("destination",))),
        "mirrorPercent": UINT,
        "mirrorPercentage": _PERCENT,
        "corsPolicy": Obj({
            "allowOrigin": _STRINGS,
            "allowOrigins": ListOf(_STRING_MATCH),
            "allowMethods": _STRINGS,
            "allowHeaders": _STRINGS,
            "exposeHeaders": _STRINGS,
            "maxAge": DURATION,
            "allowCredentials": BOOL,
            "unmatchedPreflights": Enum(("UNSPECIFIED", "FORWARD", "IGNORE")),
        }),
        "headers": _HEADERS,
    },
    oneof=(("route", "redirect", "directResponse", "delegate"),),
    need_one=("route", "redirect", "directResponse", "delegate"),
)
_L4_ROUTE = ListOf(Obj({"destination": _DESTINATION, "weight": INT}, required=("destination",)))
_L4_MATCH_COMMON: dict[str, Spec] = {
    "destinationSubnets": _STRINGS,
    "port": PORT,
    "sourceLabels": _LABELS,
    "gateways": _STRINGS,
    "sourceNamespace": STR,
}
_VIRTUAL_SERVICE = Obj({
    "hosts": _STRINGS,
    "gateways": _STRINGS,
    "http": ListOf(_HTTP_ROUTE),
    "tcp": ListOf(Obj(
        {"match": ListOf(Obj({**_L4_MATCH_COMMON, "sourceSubnet": STR})), "route": _L4_ROUTE},
        required=("route",),
    )),
    "tls": ListOf(Obj(
        {"match": ListOf(Obj({"sniHosts": _STRINGS, **_L4_MATCH_COMMON}, required=("sniHosts",))),
         "route": _L4_ROUTE},
        required=("match", "route"),
    )),
    "exportTo": _STRINGS,
})

_CLIENT_TLS = Obj({
    "mode": Enum(("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")),
    "clientCertificate": STR,
    "privateKey": STR,
    "caCertificates": STR,
    "credentialName": STR,
    "subjectAltNames": _STRINGS,
    "sni": STR,
    "insecureSkipVerify": BOOL,
    "caCrl": STR,
})
_FAILOVER = ListOf(Obj({"from": STR, "to": STR}))
_LOAD_BALANCER = Obj(
    {
        "simple": Enum(("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN",
                        "LEAST_REQUEST")),
        "consistentHash": Obj(
            {
                "httpHeaderName": HEADER_NAME,
                "httpCookie": Obj(
                    {"name": STR, "path": STR, "ttl": DURATION,
                     "attributes": ListOf(Obj({"name": STR, "value": STR}, required=("name",)))},
                    required=("name",),
                ),
                "useSourceIp": BOOL,
                "httpQueryParameterName": STR,
                "ringHash": Obj({"minimumRingSize": UINT}),
                "maglev": Obj({"tableSize": UINT}),
                "minimumRingSize": UINT,
            },
            oneof=(("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"),
                   ("ringHash", "maglev")),
        ),
        "localityLbSetting": Obj({
            "distribute": ListOf(Obj({"from": STR, "to": MapOf(UINT)})),
            "failover": _FAILOVER,
            "failoverPriority": _STRINGS,
            "enabled": BOOL,
        }),
        "zoneAwareLbSetting": Obj({"enabled": BOOL, "failover": _FAILOVER,
                                   "failoverPriority": _STRINGS, "minClusterSize": UINT}),
        "warmupDurationSecs": DURATION,
        "warmup": Obj({"duration": DURATION, "minimumPercent": NUMBER, "aggression": NUMBER},
                      required=("duration",)),
    },
    oneof=(("simple", "consistentHash"),),
)
_CONNECTION_POOL = Obj({
    "tcp": Obj({
        "maxConnections": INT,
        "connectTimeout": DURATION,
        "tcpKeepalive": Obj({"probes": UINT, "time": DURATION, "interval": DURATION}),
        "maxConnectionDuration": DURATION,
        "idleTimeout": DURATION,
    }),
    "http": Obj({
        "http1MaxPendingRequests": INT,
        "http2MaxRequests": INT,
        "maxRequestsPerConnection": INT,
        "maxRetries": INT,
        "idleTimeout": DURATION,
        "h2UpgradePolicy": Enum(("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")),
        "useClientProtocol": BOOL,
        "maxConcurrentStreams": INT,
        "http2KeepAlive": Obj({"interval": DURATION, "timeout": DURATION}),
    }),
})
_OUTLIER_DETECTION = Obj({
    "consecutiveErrors": INT,
    "splitExternalLocalOriginErrors": BOOL,
    "consecutiveLocalOriginFailures": UINT,
    "consecutiveGatewayErrors": UINT,
    "consecutive5xxErrors": UINT,
    "interval": DURATION,
    "baseEjectionTime": DURATION,
    "maxEjectionPercent": INT,
    "minHealthPercent": INT,
})
_POLICY_PARTS: dict[str, Spec] = {
    "loadBalancer": _LOAD_BALANCER,
    "connectionPool": _CONNECTION_POOL,
    "outlierDetection": _OUTLIER_DETECTION,
    "tls": _CLIENT_TLS,
}
_TRAFFIC_POLICY = Obj({
    **_POLICY_PARTS,
    "portLevelSettings": ListOf(Obj({"port": _PORT_SELECTOR, **_POLICY_PARTS})),
    "tunnel": Obj({"protocol": STR, "targetHost": STR, "targetPort": PORT},
                  required=("targetHost", "targetPort")),
    "proxyProtocol": Obj({"version": Enum(("V1", "V2"))}),
    "retryBudget": Obj({"percent": NUMBER, "minRetryConcurrency": UINT,
                        "budgetInterval": DURATION}),
})
_DESTINATION_RULE = Obj(
    {
        "host": STR,
        "trafficPolicy": _TRAFFIC_POLICY,
        "subsets": ListOf(Obj({"name": STR, "labels": _LABELS, "trafficPolicy": _TRAFFIC_POLICY},
                              required=("name",))),
        "exportTo": _STRINGS,
        "workloadSelector": Obj({"matchLabels": _LABELS}),
    },
    required=("host",),
)

_SERVER_TLS = Obj({
    "httpsRedirect": BOOL,
    "mode": Enum(("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL",
                  "OPTIONAL_MUTUAL")),
    "serverCertificate": STR,
    "privateKey": STR,
    "caCertificates": STR,
    "caCrl": STR,
    "credentialName": STR,
    "credentialNames": _STRINGS,
    "caCertCredentialName": STR,
    "tlsCertificates": ListOf(Obj({"serverCertificate": STR, "privateKey": STR,
                                   "caCertificates": STR})),
    "subjectAltNames": _STRINGS,
    "verifyCertificateSpki": _STRINGS,
    "verifyCertificateHash": _STRINGS,
    "minProtocolVersion": Enum(("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")),
    "maxProtocolVersion": Enum(("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")),
    "cipherSuites": _STRINGS,
    "insecureSkipVerify": BOOL,
})
_GATEWAY = Obj({
    "selector": _LABELS,
    "servers": ListOf(Obj(
        {
            "port": Obj({"number": PORT, "protocol": _PROTOCOL, "name": STR, "targetPort": PORT},
                        required=("number", "protocol", "name")),
            "bind": STR,
            "hosts": _STRINGS,
            "tls": _SERVER_TLS,
            "defaultEndpoint": STR,
            "name": STR,
        },
        required=("port", "hosts"),
    )),
})

_SIDECAR_PORT = Obj({"number": PORT, "protocol": _PROTOCOL, "name": STR, "targetPort": PORT})
_CAPTURE_MODE = Enum(("DEFAULT", "IPTABLES", "NONE"))
_SIDECAR = Obj({
    "workloadSelector": Obj({"labels": _LABELS}),
    "ingress": ListOf(Obj(
        {"port": _SIDECAR_PORT, "bind": STR, "captureMode": _CAPTURE_MODE,
         "defaultEndpoint": STR, "tls": _SERVER_TLS, "connectionPool": _CONNECTION_POOL},
        required=("port",),
    )),
    "egress": ListOf(Obj(
        {"port": _SIDECAR_PORT, "bind": STR, "captureMode": _CAPTURE_MODE, "hosts": _STRINGS},
        required=("hosts",),
    )),
    "inboundConnectionPool": _CONNECTION_POOL,
    "outboundTrafficPolicy": Obj({"mode": Enum(("REGISTRY_ONLY", "ALLOW_ANY")),
                                  "egressProxy": _DESTINATION}),
})

_SERVICE_ENTRY = Obj(
    {
        "hosts": _STRINGS,
        "addresses": _STRINGS,
        "ports": ListOf(Obj(
            {"number": PORT, "protocol": _PROTOCOL, "name": STR, "targetPort": PORT},
            required=("number", "name"),
        )),
        "location": Enum(("MESH_EXTERNAL", "MESH_INTERNAL")),
        "resolution": Enum(("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")),
        "endpoints": ListOf(Obj({
            "address": STR,
            "ports": MapOf(PORT),
            "labels": _LABELS,
            "network": STR,
            "locality": STR,
            "weight": UINT,
            "serviceAccount": STR,
        })),
        "workloadSelector": Obj({"labels": _LABELS}),
        "exportTo": _STRINGS,
        "subjectAltNames": _STRINGS,
    },
    required=("hosts",),
)

_MUTUAL_TLS = Obj({"mode": Enum(("UNSET", "DISABLE", "PERMISSIVE", "STRICT"))})
_PEER_AUTHENTICATION = Obj({
    "selector": Obj({"matchLabels": _LABELS}),
    "mtls": _MUTUAL_TLS,
    "portLevelMtls": MapOf(_MUTUAL_TLS, key=PORT),
})

# security.istio.io AuthorizationPolicy and RequestAuthentication; the checks the structure
# cannot express (when keys, paths, CIDRs, JWKS) live in security.py.
_POLICY_TARGET = Obj({"group": STR, "kind": STR, "name": STR, "namespace": STR},
                     required=("kind", "name"))
_AUTHZ_SOURCE = Obj({name: _STRINGS for name in (
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
    "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")})
_AUTHZ_OPERATION = Obj({name: _STRINGS for name in (
    "hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")})
_AUTHZ_RULE = Obj({
    "from": ListOf(Obj({"source": _AUTHZ_SOURCE})),
    "to": ListOf(Obj({"operation": _AUTHZ_OPERATION})),
    "when": ListOf(Obj({"key": STR, "values": _STRINGS, "notValues": _STRINGS},
                       required=("key",))),
})
_AUTHORIZATION_POLICY = Obj({
    "selector": Obj({"matchLabels": _LABELS}),
    "targetRef": _POLICY_TARGET,
    "targetRefs": ListOf(_POLICY_TARGET),
    "action": Enum(("ALLOW", "DENY", "AUDIT", "CUSTOM")),
    "provider": Obj({"name": STR}),
    "rules": ListOf(_AUTHZ_RULE),
}, oneof=(("selector", "targetRef", "targetRefs"),))
_JWT_RULE = Obj({
    "issuer": STR,
    "audiences": _STRINGS,
    "jwksUri": STR,
    "jwks": STR,
    "fromHeaders": ListOf(Obj({"name": STR, "prefix": STR}, required=("name",))),
    "fromParams": _STRINGS,
    "fromCookies": _STRINGS,
    "outputPayloadToHeader": STR,
    "forwardOriginalToken": BOOL,
    "outputClaimToHeaders": ListOf(Obj({"header": STR, "claim": STR},
                                       required=("header", "claim"))),
    "timeout": DURATION,
}, required=("issuer",))
_REQUEST_AUTHENTICATION = Obj({
    "selector": Obj({"matchLabels": _LABELS}),
    "targetRef": _POLICY_TARGET,
    "targetRefs": ListOf(_POLICY_TARGET),
    "jwtRules": ListOf(_JWT_RULE),
}, oneof=(("selector", "targetRef", "targetRefs"),))


# Telemetry: `accessLogging` is translated (controlplane/accesslog.py); `metrics`, `tracing`
# and policy attachment are accepted here only to be refused by name (_telemetry_rules).
_TELEMETRY = Obj({
    "selector": Obj({"matchLabels": _LABELS}),
    "targetRef": ANY_MAP, "targetRefs": ListOf(ANY_MAP),
    "accessLogging": ListOf(Obj({
        "providers": ListOf(Obj({"name": STR})),
        "disabled": BOOL,
        "filter": Obj({"expression": STR}),
        "match": Obj({"mode": Enum(("CLIENT", "SERVER", "CLIENT_AND_SERVER"))}),
    })),
    "metrics": ListOf(ANY_MAP), "tracing": ListOf(ANY_MAP),
})


def _document(body: Mapping[str, Spec], required: tuple[str, ...] = ()) -> Obj:
    base: dict[str, Spec] = {"apiVersion": STR, "kind": STR, "metadata": _OBJECT_META}
    return Obj({**base, **body, "status": ANY}, required=required)


SCHEMAS: dict[str, Obj] = {
    "Namespace": _document({"spec": Obj({"finalizers": _STRINGS})}),
    "Service": _document({"spec": _SERVICE_SPEC}),
    "ServiceAccount": _document({"secrets": ListOf(ANY_MAP), "imagePullSecrets": ListOf(ANY_MAP),
                                 "automountServiceAccountToken": BOOL}),
    "Secret": _document({"data": MapOf(BASE64), "stringData": _LABELS, "type": STR,
                         "immutable": BOOL}),
    "ConfigMap": _document({"data": _LABELS, "binaryData": MapOf(BASE64), "immutable": BOOL}),
    "Deployment": _document({"spec": _DEPLOYMENT_SPEC}, required=("spec",)),
    "Gateway": _document({"spec": _GATEWAY}),
    "VirtualService": _document({"spec": _VIRTUAL_SERVICE}),
    "DestinationRule": _document({"spec": _DESTINATION_RULE}, required=("spec",)),
    "Sidecar": _document({"spec": _SIDECAR}),
    "ServiceEntry": _document({"spec": _SERVICE_ENTRY}, required=("spec",)),
    "PeerAuthentication": _document({"spec": _PEER_AUTHENTICATION}),
    "Telemetry": _document({"spec": _TELEMETRY}),
    "AuthorizationPolicy": _document({"spec": _AUTHORIZATION_POLICY}),
    "RequestAuthentication": _document({"spec": _REQUEST_AUTHENTICATION}),
}


# --- Walking -----------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def field_path(parent: str, key: object) -> str:
    """`spec` + `http` -> `spec.http`; keys with dots or slashes read `labels["app.io/x"]`."""
    text = str(key)
    if _PLAIN_KEY.fullmatch(text):
        return f"{parent}.{text}" if parent else text
    return f"{parent}[{json.dumps(text, ensure_ascii=False)}]"  # escapes CR/LF and quotes


def item_path(parent: str, index: int) -> str:
    """`spec.http` + 0 -> `spec.http[0]`."""
    return f"{parent}[{index}]"


def _describe(value: object) -> str:
    """How a YAML value reads in a message: `string "abc"`, `integer 5`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'string "{shown}"'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaf_name(path: str) -> str:
    tail = re.split(r"[.\[]", path)[-1].rstrip("]").strip('"')
    return tail or "value"


def _check_scalar(value: Any, kind: str, path: str, walk: _Walk) -> None:
    name = _leaf_name(path)
    if kind == ANY:
        return
    if kind == ANY_MAP:
        if not isinstance(value, dict):
            walk.add(path, f"expected a mapping, got {_describe(value)}",
                     f"write {name} as indented `key: value` lines")
        return
    if kind == STR:
        if not isinstance(value, str):
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            fix = f'quote it: {name}: "{shown}"' if _is_number(value) or isinstance(
                value, bool) else f"write {name} as a string"
            walk.add(path, f"expected string, got {_describe(value)}", fix)
        return
    if kind == BOOL:
        if not isinstance(value, bool):
            walk.add(path, f"expected boolean, got {_describe(value)}",
                     f"write {name}: true or {name}: false, without quotes")
        return
    if kind == NUMBER:
        if not _is_number(value):
            walk.add(path, f"expected number, got {_describe(value)}", _unquote_fix(name, value))
        return
    if kind in (INT, UINT, INT64, PORT):
        if not _is_int(value):
            walk.add(path, f"expected integer, got {_describe(value)}", _unquote_fix(name, value))
        elif kind == UINT and value < 0:
            walk.add(path, f"expected a non-negative integer, got {value}",
                     f"use a {name} of 0 or more")
        elif kind == PORT and not 1 <= value <= 65535:
            walk.add(path, f"port {value} is out of range 1-65535", "use a port from 1 to 65535")
        elif kind in _INT_RANGES and not _INT_RANGES[kind][0] <= value <= _INT_RANGES[kind][1]:
            low, high = _INT_RANGES[kind]
            bits = {INT: "a 32-bit integer", UINT: "an unsigned 32-bit integer"}.get(
                kind, "a 64-bit integer")
            walk.add(path, f"{value} is out of range for {bits} ({low} to {high})",
                     f"set {name} to a number from {low} to {high}")
        return
    if kind == HEADER_NAME:
        if not isinstance(value, str) or not _HEADER_TOKEN.fullmatch(value):
            shown = repr(value) if isinstance(value, str) else _describe(value)
            walk.add(path, f"invalid HTTP header name {shown}: a header name is a "
                     "token of letters, digits and !#$%&'*+-.^_`|~ (no spaces, CR or LF)",
                     "use a header name like x-user or end-user")
        return
    if kind == HEADER_VALUE:
        if not isinstance(value, str):
            _check_scalar(value, STR, path, walk)
        elif _HEADER_VALUE_FORBIDDEN.search(value):
            walk.add(path, "invalid HTTP header value: it contains a line break (CR/LF) or a "
                     "NUL character, which would end the header", "put the value on one line")
        return
    if kind == INT_OR_STR:
        if _is_int(value):
            _check_scalar(value, PORT, path, walk)
        elif not isinstance(value, str):
            walk.add(path, f"expected a port number or name, got {_describe(value)}",
                     f"write {name} as a number like 8080 or a port name like http")
        return
    if kind == QUANTITY:
        if not (_is_number(value) or isinstance(value, str)):
            walk.add(path, f"expected a quantity like 100m or 128Mi, got {_describe(value)}",
                     f"write {name} as a number or a quantity string")
        return
    if kind == DURATION:
        if not isinstance(value, str):
            walk.add(path, f"expected duration, got {_describe(value)}",
                     f'write {name} as a string with a unit, such as "{_seconds(value)}"')
            return
        try:
            seconds = parse_duration(value)
        except ValueError:
            walk.add(path, f'invalid duration "{value}"',
                     f"write {name} with a unit, such as 5s, 0.5s, 100ms, 1m or 1h")
            return
        if abs(seconds) > MAX_DURATION_SECONDS:
            walk.add(path, f'duration "{value}" is out of range: Istio reads durations as Go '
                     "does, at most 2562047h (about 292 years)",
                     f"use a shorter {name}, such as 1h or 24h")
        return
    if kind == BASE64:
        if not isinstance(value, str):
            walk.add(path, f"expected base64 text, got {_describe(value)}",
                     "put plain values under stringData instead of data")
            return
        try:
            base64.b64decode(value.encode(), validate=True)
        except (binascii.Error, ValueError):
            walk.add(path, "illegal base64 data",
                     "base64-encode the value, or put it under stringData in plain text")
        return
    raise AssertionError(f"unknown scalar type {kind}")


def _seconds(value: object) -> str:
    return f"{value}s" if _is_number(value) else "5s"


def _unquote_fix(name: str, value: object) -> str:
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        return f"remove the quotes: {name}: {value.strip()}"
    return f"set {name} to a number, such as {name}: 80 (no quotes)"


def _check_enum(value: Any, spec: Enum, path: str, walk: _Walk) -> None:
    allowed = ", ".join(spec.values)
    if not isinstance(value, str):
        walk.add(path, f"expected one of {allowed}; got {_describe(value)}",
                 f"set {_leaf_name(path)} to one of {allowed}")
        return
    if value in spec.values or (spec.ignore_case and value.upper() in spec.values):
        return
    guess = _suggest(value, spec.values)
    hint = f'; did you mean "{guess}"?' if guess else ""
    walk.add(path, f'invalid value "{value}"{hint} (allowed: {allowed})',
             f"set {_leaf_name(path)} to {guess}" if guess else f"use one of {allowed}")


def _suggest(word: str, choices: Any) -> str | None:
    """The closest known name: typos, wrong case and snake_case all count."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), word)
    for candidate in (word.lower(), camel.lower()):
        if candidate in lowered:
            return lowered[candidate]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def _check(value: Any, spec: Spec, path: str, walk: _Walk) -> None:
    if value is None:
        return  # null means "not set", as the API server reads it
    if isinstance(spec, str):
        _check_scalar(value, spec, path, walk)
    elif isinstance(spec, Enum):
        _check_enum(value, spec, path, walk)
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            walk.add(path, f"expected a list, got {_describe(value)}",
                     f'write {_leaf_name(path)} as a list: one "- item" per line')
            return
        for i, item in enumerate(value):
            _check(item, spec.item, item_path(path, i), walk)
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            walk.add(path, f"expected a mapping, got {_describe(value)}",
                     f"write {_leaf_name(path)} as indented `key: value` lines")
            return
        for key, item in value.items():
            sub = field_path(path, key)
            if spec.key == PORT:
                _check_port_key(key, sub, walk)
            elif spec.key == HEADER_NAME:
                _check_scalar(key, HEADER_NAME, sub, walk)
            elif not isinstance(key, str):
                walk.add(sub, f"expected a string key, got {_describe(key)}",
                         f'quote the key: "{key}"')
            _check(item, spec.value, sub, walk)
    else:
        _check_object(value, spec, path, walk)


def _check_port_key(key: object, path: str, walk: _Walk) -> None:
    number: int | None = None
    if isinstance(key, int) and not isinstance(key, bool):
        number = key
    elif isinstance(key, str) and key.isdigit():
        number = int(key)
    if number is None or not 1 <= number <= 65535:
        walk.add(path, f"expected a port number 1-65535 as key, got {_describe(key)}",
                 "use the port number as the key, e.g. 8080:")


def _check_object(value: Any, spec: Obj, path: str, walk: _Walk) -> None:
    if not isinstance(value, dict):
        walk.add(path, f"expected a mapping, got {_describe(value)}",
                 f"write {_leaf_name(path)} as indented `key: value` lines")
        return
    for key, item in value.items():
        sub = field_path(path, key)
        if key in spec.fields:
            _check(item, spec.fields[key], sub, walk)
        elif not spec.open:
            _unknown_field(str(key), spec, path, sub, walk)
    for name in spec.required:
        if value.get(name) is None:
            walk.add(field_path(path, name), f'missing required field "{name}"',
                     f"add {name}: under {path or 'the top level'}")
    for group in spec.oneof:
        present = [name for name in group if value.get(name) is not None]
        if len(present) > 1:
            walk.add(path, f"only one of {', '.join(group)} may be set; found "
                     f"{', '.join(present)}", f"keep one of {', '.join(present)}")
    if spec.need_one and not any(value.get(name) is not None for name in spec.need_one):
        walk.add(path, f"one of {', '.join(spec.need_one)} is required",
                 f"add a {spec.need_one[0]}: saying where matching requests go")


def _unknown_field(key: str, spec: Obj, parent: str, path: str, walk: _Walk) -> None:
    guess = _suggest(key, spec.fields)
    if guess:
        walk.add(path, f'unknown field "{key}"; did you mean "{guess}"?',
                 f'rename "{key}" to "{guess}"')
        return
    # A field one level too shallow usually means the indentation slipped.
    for holder in ("metadata", "spec"):
        inner = spec.fields.get(holder)
        if not parent and isinstance(inner, Obj) and key in inner.fields:
            walk.add(path, f'unknown field "{key}" at the top level',
                     f'indent "{key}" under {holder}:')
            return
    known = ", ".join(sorted(spec.fields))
    walk.add(path, f'unknown field "{key}"', f"remove it; the fields allowed here are: {known}")


# --- Per-kind rules the declarative schema cannot express ---------------------------------


def _service_rules(body: dict[str, Any]) -> Iterator[_Problem]:
    ports = (body.get("spec") or {}).get("ports")
    if not isinstance(ports, list) or len(ports) < 2:
        return
    seen: set[str] = set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        name = port.get("name")
        if not name:
            yield _Problem(f"spec.ports[{i}].name",
                           "a Service with several ports must name each of them",
                           'add name: http (Istio reads the protocol from a name like "http-...")')
        elif name in seen:
            yield _Problem(f"spec.ports[{i}].name", f'duplicate port name "{name}"',
                           "give each port its own name")
        else:
            seen.add(str(name))


def _peer_authentication_rules(body: dict[str, Any]) -> Iterator[_Problem]:
    spec = body.get("spec") or {}
    if isinstance(spec, dict) and spec.get("portLevelMtls") and not spec.get("selector"):
        yield _Problem("spec.portLevelMtls", "portLevelMtls requires a selector",
                       "add selector.matchLabels naming the workload whose ports these are")


def _telemetry_rules(body: dict[str, Any]) -> Iterator[_Problem]:
    """What of a Telemetry the local mesh does not translate, refused by name."""
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return
    cluster = "it works on a cluster (LAB_BACKEND=kubernetes)"
    for key, why in (("metrics", "the local mesh derives Istio's metrics from access logs "
                                 "(docs/telemetry.md), without Telemetry overrides"),
                     ("tracing", "the local mesh has no tracing"),
                     ("targetRef", "policy attachment is not translated"),
                     ("targetRefs", "policy attachment is not translated")):
        if key in spec:
            yield _Problem(f"spec.{key}", f"{why}; {cluster}", f"remove spec.{key}, or use "
                           "spec.selector for a workload")
    for i, entry in enumerate(spec.get("accessLogging") or []):
        if not isinstance(entry, dict):
            continue
        for j, provider in enumerate(entry.get("providers") or []):
            name = provider.get("name") if isinstance(provider, dict) else None
            if name != "envoy":
                yield _Problem(f"spec.accessLogging[{i}].providers[{j}].name",
                               f'provider "{name}" is not defined: the local mesh has Istio\'s '
                               'built-in "envoy" provider (the proxy\'s stdout) only; '
                               f"{cluster} with meshConfig.extensionProviders",
                               'use name: envoy')
        mode = (entry.get("match") or {}).get("mode") if isinstance(entry.get("match"),
                                                                    dict) else None
        if mode not in (None, "CLIENT_AND_SERVER"):
            yield _Problem(f"spec.accessLogging[{i}].match.mode",
                           f"match.mode {mode} is not translated by the local mesh (it logs "
                           f"client and server sides alike); {cluster}",
                           "remove match, or use CLIENT_AND_SERVER")


_RULES = {"Service": _service_rules, "PeerAuthentication": _peer_authentication_rules,
          "Telemetry": _telemetry_rules}

# --- Public API --------------------------------------------------------------------------


def schema_code(kind: str) -> str:
    """IST0106 (Istio's SchemaValidationError) for Istio kinds, LAB0101 for Kubernetes ones."""
    return SCHEMA_CODE_ISTIO if kind in ISTIO_KINDS else SCHEMA_CODE_KUBE


# Kinds of Istio's and the Gateway API's groups the local mesh does not serve (yet): named
# honestly instead of "unknown" or "did you mean" another API's kind.
NOT_SERVED_CODE = "LAB0405"
NOT_SERVED: dict[str, frozenset[str]] = {
    "networking.istio.io": frozenset({"EnvoyFilter", "WorkloadEntry", "WorkloadGroup",
                                      "ProxyConfig"}),
    "extensions.istio.io": frozenset({"WasmPlugin"}),
    "gateway.networking.k8s.io": frozenset({"Gateway", "GatewayClass", "HTTPRoute",
                                            "GRPCRoute", "TCPRoute", "TLSRoute", "UDPRoute",
                                            "ReferenceGrant", "BackendTLSPolicy"}),
}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _not_served(kind: str, api_version: str, ref: str) -> Diagnostic | None:
    group = _group(api_version)
    if kind not in NOT_SERVED.get(group, frozenset()):
        return None
    return Diagnostic(
        NOT_SERVED_CODE, "Error", ref,
        f"{kind} ({group}) is not served by the local mesh yet; a real cluster with Istio "
        "serves it (LAB_BACKEND=kubernetes)", "kind",
        "run this part with LAB_BACKEND=kubernetes, or leave this resource out")


def check_kind(kind: str, api_version: str, ref: str) -> Diagnostic | None:
    """An LAB0102 Diagnostic if the kit does not know this kind/apiVersion (LAB0405 for a kind
    of Istio or the Gateway API the local mesh does not serve), else None."""
    supported = ", ".join(sorted(KINDS))
    not_served = _not_served(kind, api_version, ref)
    if not_served:
        return not_served
    if kind not in KINDS:
        # Only a kind of the same API group is a plausible typo.
        group = _group(api_version)
        guess = _suggest(kind, [k for k, versions in KINDS.items()
                                if any(_group(v) == group for v in versions)])
        hint = f'; did you mean "{guess}"?' if guess else ""
        return Diagnostic(
            UNKNOWN_KIND_CODE, "Error", ref,
            f'unknown kind "{kind}"{hint} Supported kinds: {supported}',
            "kind", f"set kind: {guess}" if guess else "use one of the supported kinds",
        )
    if api_version not in KINDS[kind]:
        versions = ", ".join(KINDS[kind])
        return Diagnostic(
            UNKNOWN_KIND_CODE, "Error", ref,
            f'no matches for kind "{kind}" in version "{api_version}"',
            "apiVersion", f"set apiVersion to one of {versions}",
        )
    return None


def validate(resource: Resource) -> list[Diagnostic]:
    """Every structural problem of one manifest, each with its field path and a fix."""
    unknown = check_kind(resource.kind, resource.api_version, resource.ref)
    if unknown:
        return [unknown]
    walk = _Walk()
    _check(resource.body, SCHEMAS[resource.kind], "", walk)
    walk.problems.extend(_Problem(*problem) for problem in object_rules(
        resource.kind, resource.namespace, resource.body))
    rules = _RULES.get(resource.kind)
    if rules:
        walk.problems.extend(rules(resource.body))
    code = schema_code(resource.kind)
    found = [Diagnostic(code, "Error", resource.ref, p.message, p.path, p.fix)
             for p in walk.problems]
    return found or security.validate(resource)
