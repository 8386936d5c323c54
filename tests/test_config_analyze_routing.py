"""LAB0240-LAB0244: routing values the local mesh cannot translate as written are refused
or warned, naming the resource and the field (lablib/config/analyze_routing.py)."""

from __future__ import annotations

import pytest
from test_config_analyze import DESTINATION_RULES, bookinfo, codes, find


def reviews_http(rule: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{rule}"""


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_codes_envoy_sends_are_accepted(code: int) -> None:
    assert "LAB0240" not in codes(bookinfo(reviews_http(
        f"  - redirect: {{uri: /v2, redirectCode: {code}}}\n")))


def test_a_redirect_code_envoy_cannot_send_is_refused_by_field() -> None:
    found = find(bookinfo(reviews_http("  - redirect: {uri: /v2, redirectCode: 300}\n")),
                 "LAB0240")
    assert (found.severity, found.field) == ("Error", "spec.http[0].redirect.redirectCode")
    assert "301" in found.fix and "VirtualService" in found.resource


@pytest.mark.parametrize(("status", "refused"), [("UNAVAILABLE", False), ("unavailable", True),
                                                  ("14", True), ("NOPE", True)])
def test_grpc_status_must_name_a_grpc_status(status: str, refused: bool) -> None:
    rule = ("  - route: [{destination: {host: reviews}}]\n"
            f'    fault: {{abort: {{grpcStatus: "{status}", percentage: {{value: 100}}}}}}\n')
    assert ("LAB0241" in codes(bookinfo(reviews_http(rule)))) == refused


@pytest.mark.parametrize(("fault", "field"), [
    ('abort: {http2Error: "REFUSED_STREAM"}', "spec.http[0].fault.abort.http2Error"),
    ("delay: {exponentialDelay: 1s}", "spec.http[0].fault.delay.exponentialDelay"),
])
def test_faults_istio_does_not_implement_are_refused(fault: str, field: str) -> None:
    rule = f"  - route: [{{destination: {{host: reviews}}}}]\n    fault: {{{fault}}}\n"
    found = find(bookinfo(reviews_http(rule)), "LAB0242")
    assert (found.severity, found.field) == ("Error", field)


def test_use_source_ip_warns_that_every_local_pod_shares_one_address() -> None:
    rule = DESTINATION_RULES.split("---")[0].replace(
        "  subsets:", "  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n"
        "  subsets:")
    found = find(bookinfo(rule), "LAB0243")
    assert found.severity == "Warning" and "127.0.0.1" in found.message
    assert found.field == "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp"


def test_an_empty_workload_selector_is_refused() -> None:
    rule = DESTINATION_RULES.split("---")[0].replace("  subsets:",
                                                     "  workloadSelector: {}\n  subsets:")
    assert find(bookinfo(rule), "LAB0244").field == "spec.workloadSelector.matchLabels"


def test_a_subset_only_a_scoped_rule_defines_warns_of_503_for_the_others() -> None:
    scoped = DESTINATION_RULES.split("---")[0].replace(
        "  subsets:", "  workloadSelector: {matchLabels: {app: productpage}}\n  subsets:")
    route = reviews_http("  - route: [{destination: {host: reviews, subset: v1}}]\n")
    found = find(bookinfo(scoped, route), "LAB0245")
    assert (found.severity, found.field) == ("Warning", "spec.http[0].route[0].destination.subset")
    # A rule applies in its own namespace whatever its exportTo.
    local = DESTINATION_RULES.split("---")[0].replace("  subsets:", "  exportTo: [istio-system]"
                                                      "\n  subsets:")
    assert "LAB0245" not in codes(bookinfo(local, route))
    assert "LAB0245" not in codes(bookinfo(DESTINATION_RULES, route))
