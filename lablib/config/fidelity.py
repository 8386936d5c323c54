"""The fidelity ledger: what the local mesh does with every field the schema accepts.

Each kind has one dict, field path -> Entry. A path reads like the schema nests:
`spec.http[].match[].sourceLabels` (`[]` a list item, `{}` a map value; a label or
annotation key reads `metadata.labels["istio.io/rev"]`, and `"sidecar.istio.io/*"` stands for
the keys of that prefix not listed on their own). Every entry has one status:

- translated: a builder turns it into Envoy config as Istio does (the entry names the builder
  and the test that shows its effect);
- refused: an Error on apply, "not supported on the local mesh", what to do instead, and that
  a cluster (LAB_BACKEND=kubernetes) does it;
- warned: a Warning on apply; a tuning knob that does not change who gets what;
- no local meaning: a Warning on apply that says why (locality on one machine...);
- kubernetes: a Kubernetes field that does not concern the mesh (scheduling, images' pull
  policy...): the local runtime starts the app as a process and says nothing. Only Kubernetes
  kinds use it (a test checks).

`diagnostics(resource)` walks an applied manifest against the ledger; it is the one place the
local mesh refuses or warns about a field, so a field cannot be accepted and ignored: a path
the ledger does not list is refused too. `python -m lablib.config.fidelity` writes
docs/fidelity.md from the ledger.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import Diagnostic
from .injection import without_injected
from .model import Resource
from .schema import SCHEMAS, ListOf, MapOf, Obj, Spec, check_kind, field_path, item_path

__all__ = ["LEDGER", "Entry", "diagnostics", "entry_for", "schema_paths", "markdown"]

TRANSLATED, REFUSED, WARNED, NO_LOCAL_MEANING, KUBERNETES = (
    "translated", "refused", "warned", "no local meaning", "kubernetes")
STATUSES = (TRANSLATED, REFUSED, WARNED, NO_LOCAL_MEANING, KUBERNETES)

CODE_REFUSED = "LAB0401"
CODE_WARNED = "LAB0402"
CODE_NO_LOCAL_MEANING = "LAB0403"
CODE_VALUE = "LAB0404"
CODE_UNLISTED = "LAB0408"

CLUSTER = "it works on a cluster (LAB_BACKEND=kubernetes)"


@dataclass(frozen=True)
class Entry:
    """What the local mesh does with one field.

    `note` names the builder (translated) or says why and what to do instead. `whole` makes
    the entry stand for every field below it. `values`, when set, are the only values the
    builder translates; any other is refused (LAB0404). `by_value` gives other entries for
    particular values (`type: ExternalName`)."""

    status: str
    note: str
    test: str = ""
    whole: bool = False
    values: tuple[Any, ...] = ()
    by_value: Mapping[str, Entry] = field(default_factory=dict)
    yaml: bool = False  # the value is YAML text whose keys are fields (`proxy.istio.io/config`)


def translated(builder: str, test: str, *, whole: bool = False, values: tuple[Any, ...] = (),
               by_value: Mapping[str, Entry] | None = None, yaml: bool = False) -> Entry:
    return Entry(TRANSLATED, builder, test, whole, values, by_value or {}, yaml)


def refused(instead: str, *, whole: bool = True) -> Entry:
    return Entry(REFUSED, instead, whole=whole)


def warned(why: str, *, whole: bool = True) -> Entry:
    return Entry(WARNED, why, whole=whole)


def no_local_meaning(why: str, *, whole: bool = True) -> Entry:
    return Entry(NO_LOCAL_MEANING, why, whole=whole)


def kubernetes(why: str = "", *, whole: bool = True) -> Entry:
    return Entry(KUBERNETES, why or "Kubernetes runtime detail; the local mesh runs the app "
                 "as a process", whole=whole)


# --- Builders and the tests that show their effect ----------------------------------------

ROUTES = "lablib.controlplane.routes"
ROUTE_POLICIES = "lablib.controlplane.route_policies"
CLUSTERS = "lablib.controlplane.clusters"
GATEWAY = "lablib.controlplane.gateway"
SIDECAR = "lablib.controlplane.sidecar"
MTLS = "lablib.controlplane.mtls"
CONTEXT = "lablib.controlplane.context"
LISTENERS = "lablib.controlplane.listeners"
EGRESS = "lablib.controlplane.egress"
RUNTIME = "lablib.local.mesh.LocalMesh._plan_pod"
IMAGES = "lablib.local.images.command_for"
_ACCESS_LOG = "lablib.controlplane.accesslog.mesh_access_log"

T = "tests/test_translation.py::"
TR = "tests/test_translation_routing.py::"
EG = "tests/test_egress.py::"
E = "tests/test_fidelity_effects.py::"
TLS_ORIG = "tests/test_tls_origination.py::"
POLICIES = "tests/test_traffic_policies.py::"
MESH_MTLS = "tests/test_mesh_mtls.py::"
GW_TLS = "tests/test_gateway_tls.py::"
INTEGRATION = "tests/test_mesh_integration.py::"
_ACCESS_LOG_TEST = ("tests/test_troubleshooting_tools.py::test_demo_profile_logs_istio_text_to_"
                    "stdout_and_json_on_request")

# --- Common metadata ------------------------------------------------------------------------

_METADATA: dict[str, Entry] = {
    "apiVersion": translated("lablib.config.schema.check_kind", E + "test_kind_and_name_"
                             "identify_the_resource", whole=True),
    "kind": translated("lablib.config.schema.check_kind",
                       E + "test_kind_and_name_identify_the_resource", whole=True),
    "metadata": translated("lablib.config.store.ConfigStore.with_applied",
                           E + "test_kind_and_name_identify_the_resource"),
    "metadata.name": translated("lablib.config.store.ConfigStore.with_applied",
                                E + "test_kind_and_name_identify_the_resource"),
    "metadata.namespace": translated("lablib.config.store.ConfigStore.with_applied",
                                     "tests/test_translation.py::"
                                     "test_short_name_only_resolves_in_own_namespace"),
    "metadata.labels": translated("lablib.config.store.selector_matches",
                                  T + "test_subset_route_sends_everything_to_v1"),
    "metadata.annotations": kubernetes("annotations are notes for people and tools"),
    "metadata.generateName": refused("give the resource a metadata.name"),
    "status": kubernetes("status is written by the control plane; an applied one is ignored, "
                         "as the API server ignores it"),
}

# --- VirtualService -------------------------------------------------------------------------

_STRING_MATCH_TEST = E + "test_every_string_match_kind_selects_its_requests"
_SOURCE = f"{ROUTE_POLICIES}.selects_source"
_L4_SOURCE = f"{ROUTE_POLICIES}.l4_matches"
_MESH_TCP_TEST = TR + "test_mesh_tcp_rule_on_another_port_or_for_other_clients_is_not_applied"
_MESH_TLS_TEST = TR + "test_mesh_tls_rule_matches_the_tunnel_host_as_its_sni"
_REDIRECT_TEST = TR + "test_redirects_carry_scheme_port_and_code"
_RETRIES_TEST = TR + "test_retries_keep_attempts_per_try_timeout_and_retry_on_and_add_backoff"
VIRTUAL_SERVICE: dict[str, Entry] = {
    "spec": translated(f"{ROUTES}.outbound_route_config", T + "test_subset_route_sends_"
                       "everything_to_v1"),
    "spec.hosts": translated(f"{ROUTES}.mesh_virtual_services",
                             T + "test_service_names_resolve_in_every_form"),
    "spec.gateways": translated(f"{GATEWAY}.bound_virtual_services",
                                T + "test_gateway_routes_productpage_and_refuses_other_paths"),
    "spec.exportTo": translated(f"{ROUTE_POLICIES}.exported_to", TR + "test_export_to_dot_hides"
                               "_a_virtual_service_from_other_namespaces"),
    "spec.http": translated(f"{ROUTES}.http_routes", T + "test_subset_route_sends_everything"
                            "_to_v1"),
    "spec.http[].name": translated(f"{ROUTES}.http_routes", E + "test_route_names_are_"
                                   "envoys_route_names"),
    "spec.http[].match": translated(f"{ROUTES}.route_match",
                                    T + "test_header_match_routes_jason_to_v2_and_others_to_v1"),
    "spec.http[].match[].name": translated(f"{ROUTES}.http_routes",
                                           E + "test_route_names_are_envoys_route_names"),
    "spec.http[].match[].uri": translated(f"{ROUTES}.route_match", _STRING_MATCH_TEST,
                                          whole=True),
    "spec.http[].match[].scheme": translated(f"{ROUTES}.route_match", _STRING_MATCH_TEST,
                                             whole=True),
    "spec.http[].match[].method": translated(f"{ROUTES}.route_match", _STRING_MATCH_TEST,
                                             whole=True),
    "spec.http[].match[].authority": translated(f"{ROUTES}.route_match", _STRING_MATCH_TEST,
                                                whole=True),
    "spec.http[].match[].headers": translated(
        f"{ROUTES}.route_match", T + "test_header_match_routes_jason_to_v2_and_others_to_v1",
        whole=True),
    "spec.http[].match[].withoutHeaders": translated(f"{ROUTES}.route_match",
                                                     _STRING_MATCH_TEST, whole=True),
    "spec.http[].match[].port": translated(f"{ROUTES}.http_routes", T + "test_gateway_route_"
                                           "match_port_means_the_server_port"),
    "spec.http[].match[].sourceLabels": translated(
        _SOURCE, TR + "test_source_labels_route_only_the_selected_clients"),
    "spec.http[].match[].gateways": translated(f"{ROUTES}.http_routes",
                                               E + "test_match_gateways_scope_a_rule"),
    "spec.http[].match[].queryParams": translated(f"{ROUTES}.route_match", _STRING_MATCH_TEST,
                                                  whole=True),
    "spec.http[].match[].ignoreUriCase": translated(f"{ROUTES}.route_match",
                                                    _STRING_MATCH_TEST),
    "spec.http[].match[].sourceNamespace": translated(
        _SOURCE, TR + "test_source_namespace_selects_clients_by_namespace"),
    "spec.http[].match[].statPrefix": warned("per-route statistics prefixes are not added to "
                                             "the local proxies' stats; routing is unchanged"),
    "spec.http[].route": translated(f"{ROUTES}.http_route_action",
                                    T + "test_weighted_route_keeps_the_weights"),
    "spec.http[].route[].destination": translated(
        f"{ROUTES}.destination_cluster", T + "test_subset_route_sends_everything_to_v1",
        whole=True),
    "spec.http[].route[].weight": translated(f"{ROUTES}.http_route_action",
                                             T + "test_weighted_route_keeps_the_weights"),
    "spec.http[].route[].headers": translated(
        f"{ROUTES}.header_operations",
        TR + "test_per_destination_headers_go_on_their_weighted_cluster_or_the_route", whole=True),
    "spec.http[].redirect": translated(f"{ROUTES}.http_route_action",
                                       E + "test_redirect_answers_with_location_and_code"),
    "spec.http[].redirect.uri": translated(f"{ROUTES}.http_route_action",
                                           E + "test_redirect_answers_with_location_and_code"),
    "spec.http[].redirect.authority": translated(
        f"{ROUTES}.http_route_action", E + "test_redirect_answers_with_location_and_code"),
    "spec.http[].redirect.port": translated(f"{ROUTE_POLICIES}.redirect_action", _REDIRECT_TEST),
    "spec.http[].redirect.derivePort": translated(f"{ROUTE_POLICIES}.redirect_action",
                                                  _REDIRECT_TEST),
    "spec.http[].redirect.scheme": translated(f"{ROUTE_POLICIES}.redirect_action",
                                              _REDIRECT_TEST),
    "spec.http[].redirect.redirectCode": translated(
        f"{ROUTE_POLICIES}.redirect_action", E + "test_redirect_answers_with_location_and_code",
        values=(301, 302, 303, 307, 308)),
    "spec.http[].redirect.prefixRewrite": refused(
        "write the new path in redirect.uri instead"),
    "spec.http[].directResponse": translated(
        f"{ROUTES}.http_route_action", E + "test_direct_response_answers_without_an_upstream",
        whole=True),
    "spec.http[].delegate": refused(
        "write the delegate's http rules into this VirtualService instead"),
    "spec.http[].rewrite": translated(f"{ROUTES}.http_route_action",
                                      E + "test_rewrite_changes_path_and_host"),
    "spec.http[].rewrite.uri": translated(f"{ROUTES}.http_route_action",
                                          E + "test_rewrite_changes_path_and_host"),
    "spec.http[].rewrite.authority": translated(f"{ROUTES}.http_route_action",
                                                E + "test_rewrite_changes_path_and_host"),
    "spec.http[].rewrite.uriRegexRewrite": translated(
        f"{ROUTE_POLICIES}.regex_rewrite", TR + "test_uri_regex_rewrite_and_grpc_abort",
        whole=True),
    "spec.http[].timeout": translated(f"{ROUTES}.http_route_action",
                                      T + "test_fault_and_timeout_are_carried_on_the_route"),
    "spec.http[].retries": translated(f"{ROUTES}.retry_policy",
                                      T + "test_retries_become_envoys_retry_policy"),
    "spec.http[].retries.attempts": translated(f"{ROUTES}.retry_policy",
                                               T + "test_retries_become_envoys_retry_policy"),
    "spec.http[].retries.perTryTimeout": translated(
        f"{ROUTES}.retry_policy", T + "test_retries_become_envoys_retry_policy"),
    "spec.http[].retries.retryOn": translated(f"{ROUTES}.retry_policy",
                                              T + "test_retries_become_envoys_retry_policy"),
    "spec.http[].retries.retryRemoteLocalities": no_local_meaning(
        "every endpoint of the local mesh is in one locality, so there is no remote one to "
        "retry in"),
    "spec.http[].retries.retryIgnorePreviousHosts": translated(f"{ROUTES}.retry_policy",
                                                               _RETRIES_TEST),
    "spec.http[].retries.backoff": translated(f"{ROUTES}.retry_policy", _RETRIES_TEST),
    "spec.http[].fault": translated(f"{ROUTES}.fault_config",
                                    T + "test_fault_and_timeout_are_carried_on_the_route"),
    "spec.http[].fault.delay": translated(f"{ROUTES}.fault_config",
                                          POLICIES + "test_delay_is_scoped_by_its_match"),
    "spec.http[].fault.delay.percent": translated(f"{ROUTES}.percentage",
                                                  E + "test_fault_percentages_both_spellings"),
    "spec.http[].fault.delay.fixedDelay": translated(
        f"{ROUTES}.fault_config", T + "test_fault_and_timeout_are_carried_on_the_route"),
    "spec.http[].fault.delay.exponentialDelay": refused(
        "use fixedDelay (Istio itself does not implement exponentialDelay either)"),
    "spec.http[].fault.delay.percentage": translated(
        f"{ROUTES}.percentage", E + "test_fault_percentages_both_spellings", whole=True),
    "spec.http[].fault.abort": translated(
        f"{ROUTES}.fault_config", POLICIES + "test_abort_percentage_is_a_binomial_share"),
    "spec.http[].fault.abort.httpStatus": translated(
        f"{ROUTES}.fault_config", POLICIES + "test_abort_percentage_is_a_binomial_share"),
    "spec.http[].fault.abort.grpcStatus": translated(
        f"{ROUTE_POLICIES}.abort_status", TR + "test_uri_regex_rewrite_and_grpc_abort"),
    "spec.http[].fault.abort.http2Error": refused(
        "abort with an httpStatus instead (Istio does not implement http2Error either)"),
    "spec.http[].fault.abort.percentage": translated(
        f"{ROUTES}.percentage", E + "test_fault_percentages_both_spellings", whole=True),
    "spec.http[].mirror": translated(
        f"{ROUTE_POLICIES}.mirror_policies", TR + "test_mirror_without_a_percentage_copies_"
        "everything_and_mirror_percent_is_read", whole=True),
    "spec.http[].mirrors": translated(
        f"{ROUTE_POLICIES}.mirror_policies", TR + "test_mirrors_list_copies_to_each_destination_"
        "with_its_own_share", whole=True),
    "spec.http[].mirrorPercent": translated(
        f"{ROUTE_POLICIES}.mirror_policies", TR + "test_mirror_without_a_percentage_copies_"
        "everything_and_mirror_percent_is_read"),
    "spec.http[].mirrorPercentage": translated(
        f"{ROUTE_POLICIES}.mirror_policies", TR + "test_mirror_with_percentage_copies_that_"
        "share_to_the_mirror_cluster", whole=True),
    "spec.http[].corsPolicy": translated(
        f"{ROUTE_POLICIES}.cors_policy", TR + "test_cors_policy_answers_allowed_preflights_and_"
        "passes_others_on", whole=True),
    "spec.http[].headers": translated(f"{ROUTES}.header_operations",
                                      E + "test_rule_headers_set_add_and_remove", whole=True),
    # tcp and tls rules: sidecars apply the mesh's (route_policies.mesh_l4_clusters), gateways
    # their own (gateway.tcp_route_clusters, gateway.passthrough_routes).
    "spec.tcp": translated(f"{ROUTE_POLICIES}.mesh_l4_clusters",
                           TR + "test_mesh_tcp_weights_split_a_sidecar_tunnel"),
    "spec.tcp[].match": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tcp[].match[].port": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tcp[].match[].destinationSubnets": refused(
        "match on port or use a separate VirtualService per destination"),
    "spec.tcp[].match[].sourceLabels": translated(
        _L4_SOURCE, TR + "test_gateway_tcp_rule_honours_source_labels"),
    "spec.tcp[].match[].gateways": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tcp[].match[].sourceNamespace": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tcp[].match[].sourceSubnet": refused(
        "every local client shares 127.0.0.1; match on sourceLabels instead"),
    "spec.tcp[].route": translated(f"{GATEWAY}.weighted", T + "test_a_zero_weight_tcp_"
                                   "destination_is_left_out", whole=True),
    "spec.tls": translated(f"{ROUTE_POLICIES}.mesh_l4_clusters", _MESH_TLS_TEST),
    "spec.tls[].match": translated(f"{GATEWAY}.passthrough_routes",
                                   E + "test_tls_passthrough_routes_by_sni_at_the_gateway"),
    "spec.tls[].match[].sniHosts": translated(
        f"{GATEWAY}.passthrough_routes", E + "test_tls_passthrough_routes_by_sni_at_the_gateway"),
    "spec.tls[].match[].port": translated(
        f"{GATEWAY}.passthrough_routes", E + "test_tls_passthrough_routes_by_sni_at_the_gateway"),
    "spec.tls[].match[].destinationSubnets": refused(
        "match on sniHosts or port instead"),
    "spec.tls[].match[].sourceLabels": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tls[].match[].gateways": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tls[].match[].sourceNamespace": translated(_L4_SOURCE, _MESH_TCP_TEST),
    "spec.tls[].route": translated(f"{GATEWAY}.weighted",
                                   E + "test_tls_passthrough_routes_by_sni_at_the_gateway",
                                   whole=True),
}

# --- DestinationRule ------------------------------------------------------------------------


def _connection_pool(prefix: str, builder: str, test: str) -> dict[str, Entry]:
    """A connectionPool block: the limits that decide which requests fail are translated by
    `builder` (or refused where `builder` is empty); keepalives and protocol knobs warn."""
    def limit() -> Entry:
        return translated(builder, test) if builder else refused(
            "set the limit in a DestinationRule's trafficPolicy.connectionPool instead")
    keepalive = "connections on loopback do not go idle behind a NAT or load balancer"
    keepalive_test = TR + "test_outlier_local_origin_split_keepalive_and_connection_duration"

    def tcp_option(why: str) -> Entry:
        return translated(builder, keepalive_test) if builder else warned(why)
    return {
        prefix: translated(builder, test) if builder else refused(
            "set limits in a DestinationRule's trafficPolicy.connectionPool instead"),
        f"{prefix}.tcp": limit(),
        f"{prefix}.tcp.maxConnections": limit(),
        f"{prefix}.tcp.connectTimeout": limit(),
        f"{prefix}.tcp.tcpKeepalive": (translated(builder, keepalive_test, whole=True)
                                       if builder else warned(keepalive)),
        f"{prefix}.tcp.maxConnectionDuration": tcp_option(
            "connections are kept for as long as Envoy's default allows"),
        f"{prefix}.tcp.idleTimeout": warned("idle connections close on Envoy's default timer"),
        f"{prefix}.http": limit(),
        f"{prefix}.http.http1MaxPendingRequests": limit(),
        f"{prefix}.http.http2MaxRequests": limit(),
        f"{prefix}.http.maxRequestsPerConnection": limit(),
        f"{prefix}.http.maxRetries": limit(),
        f"{prefix}.http.idleTimeout": limit(),
        f"{prefix}.http.h2UpgradePolicy": warned(
            "the local proxies keep the protocol the client used"),
        f"{prefix}.http.useClientProtocol": warned(
            "the local proxies keep the protocol the client used"),
        f"{prefix}.http.maxConcurrentStreams": warned("streams per connection keep Envoy's "
                                                      "default"),
        f"{prefix}.http.http2KeepAlive": warned(keepalive),
    }


_HASH_TEST = TR + "test_consistent_hash_keys_become_the_route_hash_policy_and_a_ring"
_WARMUP_TEST = TR + "test_warmup_becomes_slow_start_and_retry_budget_a_threshold"
_LOCALITY = ("every endpoint of the local mesh runs on one machine in one locality, so there "
             "is nothing to distribute or fail over between")


def _traffic_policy(prefix: str) -> dict[str, Entry]:
    """One trafficPolicy block (host, port level, subset: the same fields)."""
    lb = f"{prefix}.loadBalancer"
    outlier = f"{prefix}.outlierDetection"
    return {
        prefix: translated(f"{CLUSTERS}.merge_policy",
                           T + "test_destination_rule_policy_at_host_port_and_subset_level"),
        lb: translated(f"{CLUSTERS}.apply_traffic_policy",
                       E + "test_simple_load_balancer_becomes_the_clusters_lb_policy"),
        f"{lb}.simple": translated(
            f"{CLUSTERS}.apply_traffic_policy",
            E + "test_simple_load_balancer_becomes_the_clusters_lb_policy",
            by_value={"PASSTHROUGH": refused(
                "PASSTHROUGH sends to the address the client dialled, which the local mesh "
                "does not keep; use ROUND_ROBIN or LEAST_REQUEST")}),
        f"{lb}.consistentHash": translated(f"{ROUTE_POLICIES}.hash_policy", _HASH_TEST),
        **{f"{lb}.consistentHash.{key}": translated(f"{ROUTE_POLICIES}.hash_policy", _HASH_TEST,
                                                    whole=True)
           for key in ("httpHeaderName", "httpCookie", "httpQueryParameterName")},
        f"{lb}.consistentHash.useSourceIp": no_local_meaning(
            "every pod of the local mesh calls from 127.0.0.1, so all clients hash alike and "
            "go to one endpoint; hash on httpHeaderName or httpCookie instead"),
        **{f"{lb}.consistentHash.{key}": translated(
            f"{CLUSTERS}.apply_consistent_hash", TR + "test_maglev_and_ring_sizes", whole=True)
           for key in ("ringHash", "maglev", "minimumRingSize")},
        f"{lb}.localityLbSetting": no_local_meaning(_LOCALITY),
        f"{lb}.zoneAwareLbSetting": no_local_meaning(_LOCALITY),
        f"{lb}.warmupDurationSecs": translated(f"{CLUSTERS}.apply_warmup", _WARMUP_TEST),
        f"{lb}.warmup": translated(f"{CLUSTERS}.apply_warmup", _WARMUP_TEST, whole=True),
        **_connection_pool(f"{prefix}.connectionPool", f"{CLUSTERS}.apply_traffic_policy",
                           "tests/test_translation.py::test_destination_rule_policy_at_host_"
                           "port_and_subset_level"),
        outlier: translated(f"{CLUSTERS}.apply_traffic_policy", POLICIES + "test_outlier_"
                            "detection_ejects_a_failing_endpoint_unless_too_few_stay"),
        **{f"{outlier}.{name}": translated(
            f"{CLUSTERS}.apply_traffic_policy",
            POLICIES + "test_outlier_detection_ejects_a_failing_endpoint_unless_too_few_stay")
           for name in ("consecutiveErrors", "consecutive5xxErrors", "interval",
                        "baseEjectionTime", "maxEjectionPercent", "minHealthPercent")},
        f"{outlier}.consecutiveGatewayErrors": translated(
            f"{CLUSTERS}.apply_traffic_policy", E + "test_outlier_gateway_errors_are_counted"),
        **{f"{outlier}.{name}": translated(
            f"{CLUSTERS}.apply_traffic_policy",
            TR + "test_outlier_local_origin_split_keepalive_and_connection_duration")
           for name in ("splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures")},
        f"{prefix}.tls": translated(f"{MTLS}.apply_upstream_tls", TLS_ORIG + "test_simple_"
                                    "verifies_the_server_with_the_mounted_ca_and_names"),
        f"{prefix}.tls.mode": translated(f"{MTLS}.apply_upstream_tls",
                                         TLS_ORIG + "test_an_explicit_mode_replaces_auto_mtls"),
        f"{prefix}.tls.clientCertificate": translated(
            f"{MTLS}.client_certificate_secret",
            TLS_ORIG + "test_mutual_presents_the_mounted_client_certificate"),
        f"{prefix}.tls.privateKey": translated(
            f"{MTLS}.client_certificate_secret",
            TLS_ORIG + "test_mutual_presents_the_mounted_client_certificate"),
        f"{prefix}.tls.caCertificates": translated(
            f"{MTLS}.server_ca_secret",
            TLS_ORIG + "test_simple_verifies_the_server_with_the_mounted_ca_and_names"),
        f"{prefix}.tls.credentialName": translated(
            f"{MTLS}.uses_credential",
            TLS_ORIG + "test_credential_name_counts_at_gateways_and_selected_sidecars_only"),
        f"{prefix}.tls.subjectAltNames": translated(
            f"{MTLS}.originate_tls",
            TLS_ORIG + "test_simple_verifies_the_server_with_the_mounted_ca_and_names"),
        f"{prefix}.tls.sni": translated(
            f"{MTLS}.originate_tls",
            TLS_ORIG + "test_simple_verifies_the_server_with_the_mounted_ca_and_names"),
        f"{prefix}.tls.insecureSkipVerify": translated(
            f"{MTLS}.originate_tls", TLS_ORIG + "test_insecure_skip_verify_verifies_nothing"),
        f"{prefix}.tls.caCrl": refused("revoke by rotating the CA instead"),
        f"{prefix}.tunnel": refused("tunnelling needs an egress proxy the local mesh does not "
                                    "run"),
        f"{prefix}.proxyProtocol": refused("the local upstreams do not read PROXY protocol "
                                           "headers"),
        f"{prefix}.retryBudget": translated(f"{CLUSTERS}.apply_traffic_policy", _WARMUP_TEST),
        f"{prefix}.retryBudget.percent": translated(f"{CLUSTERS}.apply_traffic_policy",
                                                    _WARMUP_TEST),
        f"{prefix}.retryBudget.minRetryConcurrency": translated(
            f"{CLUSTERS}.apply_traffic_policy", _WARMUP_TEST),
        f"{prefix}.retryBudget.budgetInterval": warned(
            "the budget counts the requests active at each moment (Envoy's retry budget has "
            "no interval)"),
    }


def _port_level(prefix: str) -> dict[str, Entry]:
    entries = {f"{prefix}.portLevelSettings[]{key.removeprefix(prefix)}": entry
               for key, entry in _traffic_policy(prefix).items() if key != prefix}
    return {f"{prefix}.portLevelSettings": translated(
        f"{CLUSTERS}.merge_policy",
        T + "test_destination_rule_policy_at_host_port_and_subset_level"),
        f"{prefix}.portLevelSettings[].port": translated(
            f"{CLUSTERS}.merge_policy",
            T + "test_destination_rule_policy_at_host_port_and_subset_level", whole=True),
        **{k: v for k, v in entries.items()
           if not k.endswith((".tunnel", ".proxyProtocol", ".retryBudget"))
           and ".tunnel." not in k and ".proxyProtocol." not in k and ".retryBudget." not in k}}


def _full_policy(prefix: str) -> dict[str, Entry]:
    return {**_traffic_policy(prefix), **_port_level(prefix)}


_DR_SELECTOR = (TR + "test_a_destination_rule_with_a_workload_selector_applies_only_to_"
                "selected_clients")
DESTINATION_RULE: dict[str, Entry] = {
    "spec": translated(f"{CLUSTERS}.service_port_clusters",
                       T + "test_subset_route_sends_everything_to_v1"),
    "spec.host": translated(f"{CONTEXT}.PushContext.subsets",
                            T + "test_subset_route_sends_everything_to_v1"),
    **_full_policy("spec.trafficPolicy"),
    "spec.subsets": translated(f"{CLUSTERS}.service_port_clusters",
                               T + "test_subset_route_sends_everything_to_v1"),
    "spec.subsets[].name": translated(f"{CLUSTERS}.service_port_clusters",
                                      T + "test_subset_route_sends_everything_to_v1"),
    "spec.subsets[].labels": translated(f"{CLUSTERS}.service_port_clusters",
                                        T + "test_subset_route_sends_everything_to_v1"),
    **_full_policy("spec.subsets[].trafficPolicy"),
    "spec.exportTo": translated(f"{CONTEXT}.PushContext.destination_rule", TR + "test_export_to_"
                               "dot_hides_a_destination_rule_from_other_namespaces"),
    "spec.workloadSelector": translated(f"{CONTEXT}.PushContext.destination_rule", _DR_SELECTOR),
    "spec.workloadSelector.matchLabels": translated(f"{CONTEXT}.PushContext.destination_rule",
                                                    _DR_SELECTOR),
}

# --- Gateway --------------------------------------------------------------------------------


def _server_tls(prefix: str, builder: str, test: str, *, gateway: bool) -> dict[str, Entry]:
    """A server `tls` block: a Gateway server's, or a Sidecar ingress port's (which Istio
    serves from mounted files only, and whose newer knobs nobody is adding locally)."""
    files = ("mount the files into the proxy with sidecar.istio.io/userVolume, or use "
             "credentialName")
    sidecar_defaults = ("the local sidecars terminate with Envoy's TLS defaults and verify by "
                        "the CA only")
    gateway_tls_test = TR + "test_gateway_tls_versions_ciphers_and_client_san"

    def gateway_only(builder_of_gateways: str) -> Entry:
        return (translated(f"{GATEWAY}.{builder_of_gateways}", gateway_tls_test) if gateway
                else refused(sidecar_defaults))
    entries = {
        prefix: translated(builder, test),
        f"{prefix}.mode": translated(builder, test, by_value={
            "AUTO_PASSTHROUGH": refused("AUTO_PASSTHROUGH serves multi-network east-west "
                                        "traffic; use PASSTHROUGH with a tls route"),
            "OPTIONAL_MUTUAL": refused("use MUTUAL, or SIMPLE"),
        }),
        f"{prefix}.httpsRedirect": translated(
            f"{GATEWAY}.route_config", TR + "test_https_redirect_requires_tls_on_the_plain_port")
        if gateway else refused("a sidecar port serves one protocol; leave it out"),
        f"{prefix}.serverCertificate": translated(builder, test),
        f"{prefix}.privateKey": translated(builder, test),
        f"{prefix}.caCertificates": translated(builder, test),
        f"{prefix}.caCrl": refused("revoke by rotating the CA instead"),
        f"{prefix}.credentialName": translated(builder, test),
        f"{prefix}.credentialNames": refused("give one credentialName"),
        f"{prefix}.caCertCredentialName": refused(
            "put ca.crt in the credentialName Secret, or a Secret named <credentialName>"
            "-cacert"),
        f"{prefix}.tlsCertificates": refused(files),
        f"{prefix}.subjectAltNames": gateway_only("downstream_tls"),
        f"{prefix}.verifyCertificateSpki": refused("verify by the CA (caCertificates)"),
        f"{prefix}.verifyCertificateHash": refused("verify by the CA (caCertificates)"),
        f"{prefix}.minProtocolVersion": gateway_only("tls_params"),
        f"{prefix}.maxProtocolVersion": gateway_only("tls_params"),
        f"{prefix}.cipherSuites": gateway_only("tls_params"),
        f"{prefix}.insecureSkipVerify": refused("leave it out: MUTUAL verifies the client"),
    }
    if not gateway:
        entries[f"{prefix}.credentialName"] = refused(
            "a sidecar's ingress TLS reads files: set serverCertificate and privateKey to "
            "files mounted with sidecar.istio.io/userVolume")
        entries[f"{prefix}.mode"] = translated(builder, test, values=("SIMPLE", "MUTUAL"))
    return entries


GATEWAY_KIND: dict[str, Entry] = {
    "spec": translated(f"{GATEWAY}.gateway_listeners",
                       T + "test_gateway_routes_productpage_and_refuses_other_paths"),
    "spec.selector": translated(f"{GATEWAY}.gateway_servers",
                                T + "test_gateway_without_gateway_resource_has_no_listener"),
    "spec.servers": translated(f"{GATEWAY}.gateway_servers",
                               T + "test_gateway_routes_productpage_and_refuses_other_paths"),
    "spec.servers[].port": translated(f"{GATEWAY}.gateway_listeners",
                                      T + "test_gateway_server_port_80_means_target_port_8080"),
    "spec.servers[].port.number": translated(
        f"{GATEWAY}.gateway_listeners", T + "test_gateway_server_port_80_means_target_port_8080"),
    "spec.servers[].port.protocol": translated(f"{GATEWAY}.server_kind",
                                               T + "test_tcp_route_on_gateway_splits_by_weight"),
    "spec.servers[].port.name": translated(
        f"{GATEWAY}.gateway_listeners", T + "test_gateway_server_port_80_means_target_port_8080"),
    "spec.servers[].port.targetPort": refused(
        "leave it out; the gateway Service's targetPort decides"),
    "spec.servers[].bind": refused("leave it out; gateway listeners bind the loopback address"),
    "spec.servers[].hosts": translated(f"{GATEWAY}.server_hosts_match",
                                       T + "test_gateway_routes_productpage_and_refuses_"
                                       "other_paths"),
    **_server_tls("spec.servers[].tls", f"{GATEWAY}.downstream_tls",
                  GW_TLS + "test_mutual_tls_demands_a_client_certificate_from_the_ca",
                  gateway=True),
    "spec.servers[].defaultEndpoint": refused("defaultEndpoint is for Sidecar ingress; leave it "
                                              "out"),
    "spec.servers[].name": warned("server names label statistics only; routing is unchanged"),
}

# --- Sidecar --------------------------------------------------------------------------------

_SIDECAR_TLS_TEST = "tests/test_sidecar_tls.py::test_https_from_outside_with_a_client_certificate"
_EGRESS_SCOPE_TEST = EG + "test_sidecar_egress_hosts_scope_services_and_service_entries"
_OUTBOUND_MODE_TEST = EG + "test_a_sidecar_outbound_traffic_policy_overrides_the_mesh"
SIDECAR_KIND: dict[str, Entry] = {
    "spec": translated(f"{SIDECAR}.sidecar_for", _SIDECAR_TLS_TEST),
    "spec.workloadSelector": translated(f"{SIDECAR}.sidecar_for", _SIDECAR_TLS_TEST,
                                        whole=True),
    "spec.ingress": translated(f"{SIDECAR}.ingress_ports", _SIDECAR_TLS_TEST),
    "spec.ingress[].port": translated(f"{SIDECAR}.ingress_ports", _SIDECAR_TLS_TEST),
    "spec.ingress[].port.number": translated(f"{SIDECAR}.ingress_ports", _SIDECAR_TLS_TEST),
    "spec.ingress[].port.protocol": translated(f"{LISTENERS}.sidecar_listeners",
                                               _SIDECAR_TLS_TEST),
    "spec.ingress[].port.name": translated(f"{SIDECAR}.ingress_ports", _SIDECAR_TLS_TEST),
    "spec.ingress[].port.targetPort": refused("use defaultEndpoint: 127.0.0.1:PORT"),
    "spec.ingress[].bind": refused("leave it out; the local sidecars bind loopback"),
    "spec.ingress[].captureMode": no_local_meaning(
        "the local mesh has no iptables: apps reach their sidecar by address"),
    "spec.ingress[].defaultEndpoint": translated(f"{SIDECAR}.endpoint_port", _SIDECAR_TLS_TEST),
    **_server_tls("spec.ingress[].tls", f"{SIDECAR}.downstream_file_tls", _SIDECAR_TLS_TEST,
                  gateway=False),
    **_connection_pool("spec.ingress[].connectionPool", "", ""),
    "spec.egress": translated(f"{EGRESS}.egress_scope", _EGRESS_SCOPE_TEST),
    "spec.egress[].hosts": translated(f"{EGRESS}.in_scope", _EGRESS_SCOPE_TEST),
    "spec.egress[].port": warned(
        "the egress hosts apply to every port: apps reach them through their http_proxy, "
        "without capture by port"),
    "spec.egress[].bind": no_local_meaning(
        "the local mesh has no iptables: apps reach their sidecar by address"),
    "spec.egress[].captureMode": no_local_meaning(
        "the local mesh has no iptables: apps reach their sidecar by address"),
    "spec.inboundConnectionPool": refused(
        "set limits in a DestinationRule's trafficPolicy.connectionPool instead"),
    "spec.outboundTrafficPolicy": translated(f"{EGRESS}.outbound_mode", _OUTBOUND_MODE_TEST),
    "spec.outboundTrafficPolicy.mode": translated(f"{EGRESS}.outbound_mode",
                                                  _OUTBOUND_MODE_TEST),
    "spec.outboundTrafficPolicy.egressProxy": refused(
        "route unknown hosts through the egress gateway with a VirtualService instead (the "
        "local mesh sends them by the mode alone)"),
}

# --- PeerAuthentication, ServiceEntry ------------------------------------------------------

_PA_TEST = ("tests/test_simulate_chains.py::test_port_level_disable_opens_one_port_to_"
            "plaintext_and_clients_follow")
PEER_AUTHENTICATION: dict[str, Entry] = {
    "spec": translated(f"{MTLS}.peer_authentication_mode", _PA_TEST),
    "spec.selector": translated(f"{MTLS}.peer_authentication_mode", _PA_TEST, whole=True),
    "spec.mtls": translated(f"{MTLS}.peer_authentication_mode",
                            MESH_MTLS + "test_strict_refuses_plaintext_and_keeps_mtls",
                            whole=True),
    "spec.portLevelMtls": translated(f"{MTLS}.peer_authentication_mode", _PA_TEST, whole=True),
}

_ENTRY_TEST = EG + "test_registry_only_lets_service_entry_hosts_through"
_ENDPOINTS_TEST = EG + "test_static_endpoints_on_loopback_and_subsets_by_endpoint_labels"
SERVICE_ENTRY: dict[str, Entry] = {
    "spec": translated(f"{EGRESS}.external_hosts", _ENTRY_TEST),
    "spec.hosts": translated(f"{EGRESS}.external_hosts",
                             EG + "test_wildcard_hosts_with_resolution_none"),
    "spec.addresses": warned("the local mesh has no IP capture: apps reach the host by name "
                             "(http_proxy or https_proxy), and the addresses are not used"),
    "spec.ports": translated(f"{EGRESS}.external_virtual_hosts", _ENTRY_TEST),
    "spec.ports[].number": translated(f"{EGRESS}.external_virtual_hosts", _ENTRY_TEST),
    "spec.ports[].name": translated(f"{EGRESS}.entry_port_protocol", _ENTRY_TEST),
    "spec.ports[].protocol": translated(
        f"{EGRESS}.entry_port_protocol", EG + "test_tls_origination_at_the_sidecar_upgrades_port"
        "_80"),
    "spec.ports[].targetPort": translated(
        f"{EGRESS}.endpoint_ports", E + "test_a_service_entry_endpoint_without_ports_takes_the_"
        "target_port"),
    # Outside the mesh is what the local mesh has: no sidecar, no auto mTLS.
    "spec.location": translated(f"{EGRESS}.external_clusters", _ENTRY_TEST, by_value={
        "MESH_INTERNAL": warned("MESH_INTERNAL endpoints get no auto mTLS on the local mesh "
                                "(none of them has a sidecar): traffic to them is plaintext")}),
    # Names resolve to the outside world stand-in and 127.0.0.1 endpoints are taken as given,
    # whatever the resolution (the analyzer refuses combinations Istio refuses).
    "spec.resolution": translated(f"{EGRESS}.endpoint_ports", _ENDPOINTS_TEST, by_value={
        "DYNAMIC_DNS": refused("use resolution DNS")}),
    "spec.endpoints": translated(f"{EGRESS}.endpoint_ports", _ENDPOINTS_TEST),
    "spec.endpoints[].address": translated(f"{EGRESS}.endpoint_ports", _ENDPOINTS_TEST),
    "spec.endpoints[].ports": translated(f"{EGRESS}.endpoint_ports", _ENDPOINTS_TEST,
                                         whole=True),
    "spec.endpoints[].labels": translated(f"{EGRESS}.endpoint_ports", _ENDPOINTS_TEST,
                                          whole=True),
    "spec.endpoints[].network": no_local_meaning("the local mesh has one network"),
    "spec.endpoints[].locality": no_local_meaning(_LOCALITY),
    "spec.endpoints[].weight": refused(
        "the local mesh balances a ServiceEntry's endpoints evenly: remove the weights, or "
        "split with a VirtualService's route weights over subsets"),
    "spec.endpoints[].serviceAccount": warned(
        "mTLS to ServiceEntry endpoints is not built locally, so no identity is checked"),
    "spec.workloadSelector": refused(
        "pods are not taken as ServiceEntry endpoints on the local mesh; list endpoints "
        "(127.0.0.1 and the port), or route to the pods' Service"),
    "spec.exportTo": translated("lablib.config.hosts.exported_to",
                                EG + "test_export_to_dot_hides_an_entry_from_other_namespaces"),
    "spec.subjectAltNames": warned(
        "mTLS to ServiceEntry endpoints is not built locally, so the names are not checked"),
}

# --- Telemetry, AuthorizationPolicy, RequestAuthentication ---------------------------------

_TELEMETRY_TEST = ("tests/test_troubleshooting_tools.py::test_telemetry_access_logging_wins_"
                   "over_mesh_config_most_specific_first")
_ATTACHMENT = ("policy attachment (targetRef) is not translated: the local mesh has no Gateway "
               "API gateways, Services as targets or waypoints; use spec.selector.matchLabels")
TELEMETRY: dict[str, Entry] = {
    "spec": translated(_ACCESS_LOG, _TELEMETRY_TEST),
    "spec.selector": translated(_ACCESS_LOG, _TELEMETRY_TEST, whole=True),
    "spec.targetRef": refused(_ATTACHMENT),
    "spec.targetRefs": refused(_ATTACHMENT),
    "spec.accessLogging": translated(_ACCESS_LOG, _TELEMETRY_TEST),
    "spec.accessLogging[].providers": translated(_ACCESS_LOG, _TELEMETRY_TEST),
    "spec.accessLogging[].providers[].name": translated(_ACCESS_LOG, _TELEMETRY_TEST,
                                                        values=("envoy",)),
    "spec.accessLogging[].disabled": translated(_ACCESS_LOG, _TELEMETRY_TEST),
    "spec.accessLogging[].filter": translated(_ACCESS_LOG, _TELEMETRY_TEST, whole=True),
    "spec.accessLogging[].match": translated(_ACCESS_LOG, _TELEMETRY_TEST),
    # Both sides log on the local mesh, as CLIENT_AND_SERVER asks.
    "spec.accessLogging[].match.mode": translated(_ACCESS_LOG, _TELEMETRY_TEST,
                                                  values=("CLIENT_AND_SERVER",)),
    "spec.metrics": refused("the local mesh derives Istio's metrics from access logs "
                            "(docs/telemetry.md), without Telemetry overrides; remove it"),
    "spec.tracing": refused("the local mesh has no tracing; remove it"),
}

AUTHZ = "lablib.controlplane.authz"
JWT = "lablib.controlplane.jwt"
AZ = "tests/test_authz_translation.py::"
_AUTHZ_SCOPE_TEST = AZ + "test_selector_namespace_and_root_namespace_scope"
AUTHORIZATION_POLICY: dict[str, Entry] = {
    'metadata.annotations["istio.io/dry-run"]': translated(
        f"{AUTHZ}.dry_run", AZ + "test_audit_never_blocks_and_dry_run_only_counts",
        values=("true", "false")),
    "spec": translated(f"{AUTHZ}.rbac_filters", AZ + "test_empty_spec_denies_all_and_rules_of_"
                       "empty_rule_allow_all"),
    "spec.selector": translated(f"{AUTHZ}.applies", _AUTHZ_SCOPE_TEST, whole=True),
    "spec.targetRef": refused(_ATTACHMENT),
    "spec.targetRefs": refused(_ATTACHMENT),
    "spec.action": translated(
        f"{AUTHZ}.rbac_filters", AZ + "test_deny_wins_over_allow_and_not_fields_invert",
        by_value={"CUSTOM": refused("the local mesh has no external authorizer yet: use ALLOW "
                                    "or DENY rules")}),
    "spec.provider": refused("provider goes with action CUSTOM, which the local mesh does not "
                             "serve yet"),
    "spec.rules": translated(f"{AUTHZ}.rule_policy",
                             AZ + "test_allow_by_principal_method_and_path"),
    "spec.rules[].from": translated(f"{AUTHZ}.rule_policy",
                                    AZ + "test_allow_by_principal_method_and_path"),
    "spec.rules[].from[].source": translated(f"{AUTHZ}.rule_policy",
                                             AZ + "test_allow_by_principal_method_and_path"),
    **{f"spec.rules[].from[].source.{name}": translated(f"{AUTHZ}.rule_policy", test)
       for names, test in (
           (("principals", "notPrincipals"), AZ + "test_allow_by_principal_method_and_path"),
           (("requestPrincipals", "notRequestPrincipals"),
            AZ + "test_request_principals_and_claims_reach_authorization"),
           (("namespaces", "notNamespaces"), _AUTHZ_SCOPE_TEST),
           (("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"),
            AZ + "test_ip_blocks_and_remote_ip_blocks"))
       for name in names},
    "spec.rules[].to": translated(f"{AUTHZ}.rule_policy",
                                  AZ + "test_allow_by_principal_method_and_path"),
    "spec.rules[].to[].operation": translated(
        f"{AUTHZ}.rule_policy", AZ + "test_wildcards_in_principals_hosts_and_paths", whole=True),
    "spec.rules[].when": translated(f"{AUTHZ}.when_principal",
                                    AZ + "test_when_headers_and_ports", whole=True),
}

_JWT_TEST = AZ + "test_jwt_invalid_is_401_missing_passes"
_JWT_FIELDS_TEST = E + "test_jwt_rule_fields_become_the_providers_fields"
REQUEST_AUTHENTICATION: dict[str, Entry] = {
    "spec": translated(f"{JWT}.jwt_filters", _JWT_TEST),
    "spec.selector": translated(f"{AUTHZ}.applies", _AUTHZ_SCOPE_TEST, whole=True),
    "spec.targetRef": refused(_ATTACHMENT),
    "spec.targetRefs": refused(_ATTACHMENT),
    "spec.jwtRules": translated(f"{JWT}.provider", _JWT_TEST),
    "spec.jwtRules[].issuer": translated(f"{JWT}.provider", _JWT_TEST),
    "spec.jwtRules[].jwks": translated(f"{JWT}.provider", _JWT_TEST),
    "spec.jwtRules[].audiences": translated(f"{JWT}.provider",
                                            AZ + "test_jwt_audiences_and_header_location"),
    "spec.jwtRules[].fromHeaders": translated(
        f"{JWT}.provider", AZ + "test_jwt_audiences_and_header_location", whole=True),
    **{f"spec.jwtRules[].{name}": translated(f"{JWT}.provider", _JWT_FIELDS_TEST)
       for name in ("timeout", "fromParams", "fromCookies", "outputPayloadToHeader",
                    "forwardOriginalToken")},
    "spec.jwtRules[].jwksUri": translated(
        f"{JWT}.fetch_jwks", "tests/test_shims_authz_tasks.py::test_authorization_with_jwt"),
    "spec.jwtRules[].outputClaimToHeaders": translated(f"{JWT}.provider", _JWT_FIELDS_TEST,
                                                       whole=True),
}

# --- Kubernetes kinds -----------------------------------------------------------------------

_PROTOCOL_TEST = TLS_ORIG + "test_auto_mtls_offers_istio_alpn_by_port_protocol"
SERVICE: dict[str, Entry] = {
    "spec": translated(f"{CONTEXT}.PushContext.services",
                       T + "test_unrouted_service_goes_to_every_endpoint"),
    "spec.type": translated("lablib.local.mesh.LocalMesh._admit",
                            "tests/test_gateway_port.py::test_a_gateway_server_on_the_new_port_"
                            "opens_a_listener_that_serves", by_value={
                                "ExternalName": refused(
                                    "the local mesh does not resolve ExternalName Services; "
                                    "call the external host directly")}),
    "spec.selector": translated(f"{CONTEXT}.PushContext.endpoint_workloads",
                                T + "test_unrouted_service_goes_to_every_endpoint"),
    "spec.ports": translated(f"{CONTEXT}.PushContext.services",
                             T + "test_unrouted_service_goes_to_every_endpoint"),
    "spec.ports[].name": translated("lablib.config.hosts.port_protocol", _PROTOCOL_TEST),
    "spec.ports[].appProtocol": translated("lablib.config.hosts.port_protocol", _PROTOCOL_TEST),
    "spec.ports[].port": translated(f"{CONTEXT}.PushContext.services",
                                    T + "test_unrouted_service_goes_to_every_endpoint"),
    "spec.ports[].targetPort": translated(
        f"{CONTEXT}.PushContext.services",
        T + "test_gateway_server_port_80_means_target_port_8080"),
    "spec.ports[].protocol": translated(
        f"{CONTEXT}.PushContext.services", T + "test_unrouted_service_goes_to_every_endpoint",
        values=("TCP",)),
    "spec.ports[].nodePort": translated(
        "lablib.local.mesh.LocalMesh._admit",
        "tests/test_gateway_port.py::test_a_gateway_server_on_the_new_port_opens_a_listener_"
        "that_serves"),
    "spec.clusterIP": translated(
        f"{CONTEXT}.PushContext.services", T + "test_unrouted_service_goes_to_every_endpoint",
        by_value={"None": warned(
            "a headless Service is load-balanced by the sidecar like any other on the local "
            "mesh; per-pod DNS names do not exist")}),
    "spec.clusterIPs": translated(
        "lablib.local.mesh.LocalMesh._admit",
        INTEGRATION + "test_cluster_ips_are_loopback_and_route_like_the_service_name"),
    "spec.externalTrafficPolicy": no_local_meaning("every node is this machine"),
    "spec.internalTrafficPolicy": no_local_meaning("every node is this machine"),
    "spec.sessionAffinity": translated(
        f"{CONTEXT}.PushContext.services", T + "test_unrouted_service_goes_to_every_endpoint",
        by_value={"ClientIP": refused(
            "sidecars do not use kube-proxy's affinity; use a DestinationRule's "
            "loadBalancer.consistentHash")}),
    "spec.sessionAffinityConfig": kubernetes("only read with sessionAffinity: ClientIP"),
    "spec.externalName": refused("the local mesh does not resolve ExternalName Services"),
    "spec.externalIPs": no_local_meaning("the local mesh serves on 127.0.0.1 only"),
    "spec.loadBalancerIP": no_local_meaning("the local mesh serves on 127.0.0.1 only"),
    "spec.loadBalancerSourceRanges": no_local_meaning("the local mesh serves on 127.0.0.1 "
                                                      "only"),
    "spec.loadBalancerClass": no_local_meaning("there is no cloud load balancer locally"),
    "spec.ipFamilies": kubernetes(),
    "spec.ipFamilyPolicy": kubernetes(),
    "spec.publishNotReadyAddresses": kubernetes(),
    "spec.allocateLoadBalancerNodePorts": kubernetes(),
    "spec.healthCheckNodePort": kubernetes(),
    "spec.trafficDistribution": no_local_meaning("every endpoint is on this machine"),
}

_INJECTION_TEST = INTEGRATION + "test_a_pod_label_asks_for_a_sidecar_in_a_namespace_without_"\
    "injection"
_USER_VOLUME_TEST = TLS_ORIG + "test_mutual_presents_the_mounted_client_certificate"
_POD_ANNOTATIONS = "spec.template.metadata.annotations"
_POD_LABELS = "spec.template.metadata.labels"
_PROXY_CONFIG = f'{_POD_ANNOTATIONS}["proxy.istio.io/config"]'
# The local bootstrap keeps every statistic (it sets no stats matcher), so the inclusions a
# proxyStatsMatcher asks for all hold.
_STATS_TEST = "tests/test_shims_walkthrough.py::test_06_circuit_breaking_with_fortio"


def _container(prefix: str) -> dict[str, Entry]:
    return {
        prefix: translated(RUNTIME, "tests/test_apps.py::test_details_returns_the_books_details"),
        f"{prefix}[].name": translated(RUNTIME, INTEGRATION + "test_a_kube_injected_manifest_"
                                       "runs_with_the_meshs_own_sidecar"),
        f"{prefix}[].image": translated(IMAGES, "tests/test_images.py::test_bookinfo_images_"
                                        "run_lablib_apps_on_the_mapped_port"),
        f"{prefix}[].command": kubernetes("the local runtime runs the sample image's own "
                                          "program, as the image's entrypoint would"),
        f"{prefix}[].args": translated(IMAGES, "tests/test_images.py::test_tcp_echo_takes_"
                                       "ports_and_prefix_from_the_deployments_args"),
        f"{prefix}[].ports": translated(RUNTIME, T + "test_inbound_listener_forwards_to_the_"
                                        "app", whole=True),
        f"{prefix}[].env": translated(
            "lablib.local.pod_files.env_from_sources",
            "tests/test_pod_files.py::test_env_value_from_fields_secrets_and_config_maps",
            whole=True),
        f"{prefix}[].envFrom": translated(
            "lablib.local.pod_files.env_from_sources",
            "tests/test_pod_files.py::test_env_from_may_not_bring_a_variable_that_acts_on_"
            "the_host", whole=True),
        f"{prefix}[].volumeMounts": translated(
            "lablib.local.pod_files.mount_volumes",
            "tests/test_pod_files.py::test_volume_items_modes_binary_data_and_sub_path",
            whole=True),
        **{f"{prefix}[].{name}": kubernetes() for name in (
            "imagePullPolicy", "workingDir", "resources", "securityContext",
            "volumeDevices", "readinessProbe", "livenessProbe", "startupProbe",
            "lifecycle", "stdin", "stdinOnce", "tty", "terminationMessagePath",
            "terminationMessagePolicy", "restartPolicy", "resizePolicy")},
    }


DEPLOYMENT: dict[str, Entry] = {
    "spec": translated(RUNTIME, INTEGRATION + "test_every_bookinfo_pod_has_its_sidecar"),
    "spec.replicas": translated(RUNTIME, POLICIES + "test_outlier_detection_ejects_a_failing_"
                                "endpoint_unless_too_few_stay"),
    "spec.selector": translated("lablib.config.store.pod_labels",
                                INTEGRATION + "test_every_bookinfo_pod_has_its_sidecar",
                                whole=True),
    "spec.template": translated(RUNTIME, INTEGRATION + "test_every_bookinfo_pod_has_its_sidecar"),
    "spec.template.metadata": translated(RUNTIME, _INJECTION_TEST),
    "spec.template.metadata.name": kubernetes("pods are named after their Deployment"),
    "spec.template.metadata.namespace": kubernetes("pods run in the Deployment's namespace"),
    "spec.template.metadata.generateName": kubernetes("pods are named after their Deployment"),
    _POD_LABELS: translated(RUNTIME, T + "test_subset_route_sends_everything_to_v1"),
    f'{_POD_LABELS}["sidecar.istio.io/inject"]': translated(RUNTIME, _INJECTION_TEST,
                                                           values=("true", "false")),
    f'{_POD_LABELS}["istio.io/rev"]': translated(
        "lablib.config.injection.injected",
        "tests/test_fidelity.py::test_istio_io_rev_injects_for_the_default_revision_only",
        values=("default",)),
    _POD_ANNOTATIONS: kubernetes("annotations are notes for people and tools"),
    # The older annotation: "false" opts out; "true" changes nothing where the namespace
    # already injects, and the webhook never sees the pod where it does not (as in Istio).
    f'{_POD_ANNOTATIONS}["sidecar.istio.io/inject"]': translated(
        "lablib.config.injection.injected",
        "tests/test_fidelity.py::test_istio_io_rev_injects_for_the_default_revision_only",
        values=("true", "false")),
    f'{_POD_ANNOTATIONS}["sidecar.istio.io/userVolume"]': translated(
        f"{SIDECAR}.mounted_file", _USER_VOLUME_TEST),
    f'{_POD_ANNOTATIONS}["sidecar.istio.io/userVolumeMount"]': translated(
        f"{SIDECAR}.mounted_file", _USER_VOLUME_TEST),
    f'{_POD_ANNOTATIONS}["sidecar.istio.io/status"]': translated(
        RUNTIME, INTEGRATION + "test_a_kube_injected_manifest_runs_with_the_meshs_own_sidecar"),
    f'{_POD_ANNOTATIONS}["sidecar.istio.io/*"]': refused(
        "the local sidecars are started by the mesh with fixed settings; remove the annotation"),
    # ProxyConfig as YAML: each of its keys is a field of its own.
    _PROXY_CONFIG: translated("lablib.local.bootstrap.bootstrap", _STATS_TEST, yaml=True),
    f"{_PROXY_CONFIG}.proxyStatsMatcher": translated(
        "lablib.local.bootstrap.bootstrap", _STATS_TEST, whole=True),
    f"{_PROXY_CONFIG}.*": refused(
        "the local sidecars take their settings from the mesh; set mesh-wide ones with "
        "istioctl install --set meshConfig.defaultConfig.KEY=VALUE where the kit knows KEY"),
    f'{_POD_ANNOTATIONS}["proxy.istio.io/*"]': refused("remove the annotation"),
    f'{_POD_ANNOTATIONS}["traffic.sidecar.istio.io/*"]': no_local_meaning(
        "the local mesh has no iptables to include or exclude ports from"),
    f'{_POD_ANNOTATIONS}["status.sidecar.istio.io/*"]': kubernetes(
        "written by istioctl kube-inject; the mesh runs its own sidecar"),
    f'{_POD_ANNOTATIONS}["prometheus.io/*"]': kubernetes("scraping is set up by the mesh"),
    f'{_POD_ANNOTATIONS}["kubectl.kubernetes.io/*"]': kubernetes(),
    "spec.template.spec": translated(RUNTIME, INTEGRATION + "test_every_bookinfo_pod_has_its_"
                                     "sidecar"),
    **_container("spec.template.spec.containers"),
    "spec.template.spec.initContainers": refused(
        "the local mesh does not run init containers; do their work in the app's command"),
    "spec.template.spec.volumes": translated(
        "lablib.local.pod_files.mount_volumes",
        "tests/test_pod_files.py::test_volume_items_modes_binary_data_and_sub_path",
        whole=True),
    "spec.template.spec.serviceAccountName": translated(
        f"{MTLS}.identity_secrets",
        MESH_MTLS + "test_sidecars_talk_mtls_with_spiffe_identities"),
    "spec.template.spec.serviceAccount": refused(
        "serviceAccount is the deprecated spelling the local mesh does not read; use "
        "serviceAccountName"),
    "spec.template.spec.hostNetwork": no_local_meaning(
        "every local process shares this machine's network"),
    **{f"spec.template.spec.{name}": kubernetes() for name in (
        "ephemeralContainers", "automountServiceAccountToken", "nodeSelector", "nodeName",
        "affinity", "tolerations", "securityContext", "restartPolicy",
        "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "dnsConfig",
        "hostPID", "hostIPC", "hostUsers", "shareProcessNamespace", "hostname", "subdomain",
        "setHostnameAsFQDN", "hostAliases", "imagePullSecrets", "priorityClassName", "priority",
        "preemptionPolicy", "schedulerName", "topologySpreadConstraints", "runtimeClassName",
        "enableServiceLinks", "overhead", "readinessGates", "os", "schedulingGates",
        "resourceClaims", "resources")},
    **{f"spec.{name}": kubernetes("rollouts replace pods at once on the local mesh")
       for name in ("strategy", "minReadySeconds", "revisionHistoryLimit",
                    "progressDeadlineSeconds", "paused")},
}

_NAMESPACE_LABELS = "metadata.labels"
NAMESPACE: dict[str, Entry] = {
    f'{_NAMESPACE_LABELS}["istio-injection"]': translated(
        RUNTIME, INTEGRATION + "test_every_bookinfo_pod_has_its_sidecar",
        values=("enabled", "disabled")),
    f'{_NAMESPACE_LABELS}["istio.io/rev"]': translated(
        "lablib.config.injection.injected",
        "tests/test_fidelity.py::test_istio_io_rev_injects_for_the_default_revision_only",
        values=("default",)),
    "spec": kubernetes(),
}

# meshConfig keys (config/meshconfig.py reads them) and what honours each; `istioctl install`
# refuses a key given with --set whose entry is refused.
MESH_CONFIG: dict[str, Entry] = {
    # Real Envoy: tests/test_install_mesh.py::test_enable_auto_mtls_false_sends_plaintext_...
    "enableAutoMtls": translated(f"{MTLS}.apply_upstream_tls", E + "test_enable_auto_mtls_false_"
                                 "sends_plaintext_unless_a_rule_says_istio_mutual"),
    "defaultConfig.holdApplicationUntilProxyStarts": translated(
        "lablib.local.mesh.LocalMesh._start_pod",
        "tests/test_install_mesh.py::test_hold_application_until_proxy_starts_the_app_after_"
        "its_proxy_is_ready"),
    "accessLogFile": translated(_ACCESS_LOG, _ACCESS_LOG_TEST),
    "accessLogEncoding": translated(_ACCESS_LOG, _ACCESS_LOG_TEST),
    "accessLogFormat": translated(_ACCESS_LOG, _ACCESS_LOG_TEST),
    "outboundTrafficPolicy.mode": translated(
        f"{EGRESS}.outbound_mode",
        EG + "test_registry_only_answers_502_for_http_and_resets_tunnels"),
    "defaultConfig.gatewayTopology.numTrustedProxies": translated(
        f"{LISTENERS}.hcm",
        "tests/test_authz_translation.py::test_gateway_trusts_as_many_forwarded_for_hops_as_"
        "mesh_config_says"),
    "extensionProviders": refused(
        "the local mesh has no external authorizer yet (AuthorizationPolicy action CUSTOM is "
        "refused), so a provider would do nothing; leave it out"),
}

LEDGER: dict[str, dict[str, Entry]] = {
    "Namespace": NAMESPACE,
    "Service": SERVICE,
    "ServiceAccount": {name: kubernetes("service accounts name identities; their other "
                                        "fields are Kubernetes bookkeeping")
                       for name in ("secrets", "imagePullSecrets",
                                    "automountServiceAccountToken")},
    "Secret": {"data": translated(f"{GATEWAY}.gateway_secrets",
                                  GW_TLS + "test_simple_tls_serves_the_credential_by_sni"),
               "stringData": translated(f"{MTLS}.secret_value", _USER_VOLUME_TEST),
               "type": kubernetes(), "immutable": kubernetes()},
    "ConfigMap": {"data": translated(RUNTIME, "tests/test_nginx.py::test_mounted_paths_map_"
                                     "by_the_longest_mount_path"),
                  "binaryData": translated(
                      "lablib.local.pod_files.mount_volumes",
                      "tests/test_pod_files.py::test_volume_items_modes_binary_data_and_sub_"
                      "path"),
                  "immutable": kubernetes()},
    "Deployment": DEPLOYMENT,
    "Gateway": GATEWAY_KIND,
    "VirtualService": VIRTUAL_SERVICE,
    "DestinationRule": DESTINATION_RULE,
    "Sidecar": SIDECAR_KIND,
    "ServiceEntry": SERVICE_ENTRY,
    "PeerAuthentication": PEER_AUTHENTICATION,
    "Telemetry": TELEMETRY,
    "AuthorizationPolicy": AUTHORIZATION_POLICY,
    "RequestAuthentication": REQUEST_AUTHENTICATION,
}


# --- Lookup and the walk over an applied manifest -----------------------------------------


def _key_pattern(path: str) -> str:
    """`labels["a.b/c"]` -> `labels["a.b/*"]` (the prefix wildcard); `X["k"].field` -> `X["k"].*`
    (any key of a YAML-valued annotation)."""
    match = re.fullmatch(r'(.*)\["([^"/]+/)[^"]*"\]', path)
    if match:
        return f'{match.group(1)}["{match.group(2)}*"]'
    match = re.fullmatch(r'(.*"\])\.[A-Za-z0-9_]+', path)
    return f"{match.group(1)}.*" if match else ""


def entry_for(kind: str, path: str) -> Entry | None:
    """The ledger's entry for a pattern path (`spec.http[].mirror`), own, common or wildcard."""
    ledger = LEDGER.get(kind, {})
    found = ledger.get(path) or _METADATA.get(path)
    if found is None and (pattern := _key_pattern(path)):
        found = ledger.get(pattern) or _METADATA.get(pattern)
    return found


def _message(kind: str, path: str, entry: Entry) -> tuple[str, str, str, str]:
    """(code, severity, message, fix) for a field with a status that speaks."""
    if entry.status == REFUSED:
        return (CODE_REFUSED, "Error", f"{path} is not supported on the local mesh; {CLUSTER}",
                entry.note)
    if entry.status == WARNED:
        return (CODE_WARNED, "Warning", f"{path} is accepted but has no effect on the local "
                f"mesh: {entry.note}; {CLUSTER}", "leave it, or remove it to silence this")
    return (CODE_NO_LOCAL_MEANING, "Warning", f"{path} has no meaning on the local mesh: "
            f"{entry.note}", "leave it, or remove it to silence this")


def _schema_children(spec: Spec, value: Any, pattern: str, concrete: str
                     ) -> Iterator[tuple[str, str, Spec, Any]]:
    """(pattern path, concrete path, spec, value) of the fields set under one node."""
    if isinstance(spec, ListOf) and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _schema_children(spec.item, item, pattern + "[]", item_path(concrete, i))
    elif isinstance(spec, MapOf) and isinstance(value, dict):
        for key, item in value.items():
            yield from _schema_children(spec.value, item, pattern + "{}",
                                        field_path(concrete, key))
    elif isinstance(spec, Obj) and isinstance(value, dict):
        for key, item in value.items():
            if key in spec.fields and item is not None:
                yield (f"{pattern}.{key}" if pattern else str(key), field_path(concrete, key),
                       spec.fields[key], item)


def _keyed(pattern: str, concrete: str, value: Any, kind: str
           ) -> Iterator[tuple[str, str, Any]]:
    """Label and annotation keys with entries of their own (`istio.io/rev`)."""
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        keyed = f'{pattern}["{key}"]'
        if entry_for(kind, keyed) is not None:
            yield keyed, field_path(concrete, key), item


def _yaml_fields(walk: _Manifest, pattern: str, concrete: str, text: Any
                 ) -> Iterator[Diagnostic]:
    try:
        fields = yaml.safe_load(str(text))
    except yaml.YAMLError as exc:
        yield Diagnostic(CODE_VALUE, "Error", walk.ref, f"{concrete} is not valid YAML: {exc}",
                         concrete, "write the annotation as a YAML mapping")
        return
    for key, item in (fields if isinstance(fields, dict) else {}).items():
        yield from _visit(walk, f"{pattern}.{key}", f"{concrete}.{key}", "any", item)


@dataclass(frozen=True)
class _Manifest:
    """The manifest a walk is over: its kind and how diagnostics name it."""

    kind: str
    ref: str


def _visit(walk: _Manifest, pattern: str, concrete: str, spec: Spec, value: Any
           ) -> Iterator[Diagnostic]:
    kind, ref = walk.kind, walk.ref
    entry = entry_for(kind, pattern)
    if entry is None:
        yield Diagnostic(CODE_UNLISTED, "Error", ref, f"{concrete} is not supported on the local "
                         f"mesh (the kit does not know what to do with it); {CLUSTER}",
                         concrete, "remove it")
        return
    entry = entry.by_value.get(str(value), entry)
    if entry.status == TRANSLATED and entry.values and value not in entry.values:
        allowed = ", ".join(str(v) for v in entry.values)
        yield Diagnostic(CODE_VALUE, "Error", ref, f"{concrete}: {value!r} is not a value the "
                         f"proxies can serve (they take {allowed})", concrete,
                         f"use one of {allowed}")
        return
    if entry.status in (REFUSED, WARNED, NO_LOCAL_MEANING):
        code, severity, message, fix = _message(kind, concrete, entry)
        yield Diagnostic(code, severity, ref, message, concrete, fix)
    if entry.status == REFUSED:
        return
    for sub_pattern, sub_concrete, item in _keyed(pattern, concrete, value, kind):
        yield from _visit(walk, sub_pattern, sub_concrete, "any", item)
    if entry.yaml:
        yield from _yaml_fields(walk, pattern, concrete, value)
    if entry.whole:
        return
    for sub_pattern, sub_concrete, sub_spec, item in _schema_children(spec, value, pattern,
                                                                      concrete):
        yield from _visit(walk, sub_pattern, sub_concrete, sub_spec, item)


def diagnostics(resource: Resource) -> list[Diagnostic]:
    """What the local mesh says about the fields of one manifest: an Error for each it
    refuses, a Warning for each it accepts without effect; for a kind it does not serve, the
    schema's Error saying so."""
    schema = SCHEMAS.get(resource.kind)
    if schema is None:
        unknown = check_kind(resource.kind, resource.api_version, resource.ref)
        return [unknown] if unknown else []
    # What `istioctl kube-inject` added is replaced by the mesh's own sidecar.
    body = without_injected(resource.body) if resource.kind == "Deployment" else resource.body
    walk = _Manifest(resource.kind, resource.ref)
    return [d for pattern, concrete, spec, value in _schema_children(schema, body, "", "")
            for d in _visit(walk, pattern, concrete, spec, value)]


# --- The schema's paths and the generated page ---------------------------------------------


def schema_paths(spec: Spec, prefix: str = "") -> Iterator[str]:
    """Every field path a schema accepts, parents before children."""
    if isinstance(spec, ListOf):
        yield from schema_paths(spec.item, prefix + "[]")
    elif isinstance(spec, MapOf):
        yield from schema_paths(spec.value, prefix + "{}")
    elif isinstance(spec, Obj):
        for name, sub in spec.fields.items():
            path = f"{prefix}.{name}" if prefix else name
            yield path
            yield from schema_paths(sub, path)


def resolved(kind: str, path: str) -> tuple[Entry, str] | None:
    """The entry that decides `path`: its own, or the nearest ancestor's whole entry (and the
    path it is listed under)."""
    own = entry_for(kind, path)
    if own is not None:
        return own, path
    parts = re.split(r"(?=\.)|(?=\[\])|(?=\{\})", path)
    for end in range(len(parts) - 1, 0, -1):
        ancestor = "".join(parts[:end])
        entry = entry_for(kind, ancestor)
        if entry is not None and (entry.whole or entry.status == REFUSED):
            return entry, ancestor
    return None


def keyed_entries(kind: str) -> list[str]:
    """The label/annotation key entries of one kind, and the fields of YAML-valued ones
    (they are not schema fields)."""
    return [path for path in LEDGER.get(kind, {}) if '["' in path]


def rows(kind: str) -> Iterator[tuple[str, Entry, str]]:
    """(path, entry, where it is listed) for every schema path of a kind and its key entries."""
    for path in [*schema_paths(SCHEMAS[kind]), *keyed_entries(kind)]:
        found = resolved(kind, path)
        if found is not None:
            yield path, found[0], found[1]


def counts() -> dict[str, int]:
    tally = dict.fromkeys(STATUSES, 0)
    for kind in LEDGER:
        for _, entry, _ in rows(kind):
            tally[entry.status] += 1
    return tally


def markdown() -> str:
    """docs/fidelity.md: every path of every kind with its status."""
    out = ["# What the local mesh does with each field", "",
           "Generated from `lablib/config/fidelity.py` by `python -m lablib.config.fidelity`; "
           "do not edit by hand.", "",
           "Every field the kit accepts is one of: **translated** (a builder turns it into "
           "Envoy config as Istio does), **refused** (an Error on apply; it works on a cluster, "
           "`LAB_BACKEND=kubernetes`), **warned** (a Warning on apply: a tuning knob that does "
           "not change who gets what), **no local meaning** (a Warning saying why), or "
           "**kubernetes** (a Kubernetes detail outside the mesh; the local runtime starts "
           "the app as a process).", "",
           f"On apply a refused field is an Error ({CODE_REFUSED}) naming the resource and "
           f"the field, a warned one a Warning ({CODE_WARNED}), one without local meaning a "
           f"Warning ({CODE_NO_LOCAL_MEANING}); a value the proxies cannot serve (a listed "
           f"field's other values) is an Error ({CODE_VALUE}). `istioctl analyze FILE` reports "
           "the same.", ""]
    tally = counts()
    out += ["| status | paths |", "|---|---|"]
    out += [f"| {status} | {tally[status]} |" for status in STATUSES]
    out += ["", "## istioctl install --set meshConfig.*", "",
            "Keys of `meshConfig` the local mesh reads; `istioctl install` refuses any other, "
            "and a refused one below, by name.", "", "| key | status | builder or reason |",
            "|---|---|---|"]
    out += [f"| `meshConfig.{key}` | {entry.status} | {entry.note} |"
            for key, entry in MESH_CONFIG.items()]
    for kind in LEDGER:
        out += ["", f"## {kind}", "", "| field | status | builder or reason |", "|---|---|---|"]
        for path, entry, where in rows(kind):
            note = entry.note.replace("|", "\\|")
            if where != path:
                note = f"(as {where}) {note}"
            extra = ""
            if entry.values:
                extra = " (values: " + ", ".join(str(v) for v in entry.values) + ")"
            if entry.by_value:
                extra += "; " + "; ".join(f"`{v}`: {e.status} ({e.note})"
                                          for v, e in entry.by_value.items())
            out.append(f"| `{path}` | {entry.status} | {note}{extra.replace('|', '/')} |")
    return "\n".join(out) + "\n"


DOC = Path(__file__).resolve().parents[2] / "docs" / "fidelity.md"


def main() -> int:
    DOC.write_text(markdown())
    sys.stdout.write(f"wrote {DOC}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
