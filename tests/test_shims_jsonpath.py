"""kubectl's JSONPath dialect, on the lookups the Istio tasks type and the corners of the
grammar kubectl documents (k8s.io/client-go/util/jsonpath)."""

from __future__ import annotations

import pytest

from lablib.shims.jsonpath import JSONPathError, parse, relaxed, render, values

INGRESS = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system",
                 "labels": {"app": "istio-ingressgateway", "istio": "ingressgateway"}},
    "spec": {"type": "LoadBalancer", "ports": [
        {"name": "status-port", "port": 15021, "targetPort": 15021, "nodePort": 32695},
        {"name": "http2", "port": 80, "targetPort": 8080, "nodePort": 31783},
        {"name": "https", "port": 443, "targetPort": 8443, "nodePort": 30165},
        {"name": "tcp", "port": 31400, "targetPort": 31400, "nodePort": 32067},
    ]},
    "status": {"loadBalancer": {"ingress": [{"ip": "172.19.106.241"}]}},
}
LOCAL_INGRESS = {**INGRESS, "status": {"loadBalancer": {}}}


def pod(name: str, app: str) -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": app, "image": f"{app}:1"},
                                    {"name": "istio-proxy", "image": "proxyv2:1.20.3"}]}}


PODS = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
        "items": [pod("sleep-78f7ddc675-pcr8h", "sleep"), pod("httpbin-84d967465-h564v",
                                                              "httpbin")]}


# --- the walkthrough's own lookups ----------------------------------------------------------


def test_load_balancer_ip() -> None:
    assert render("{.status.loadBalancer.ingress[0].ip}", INGRESS) == "172.19.106.241"


def test_load_balancer_ip_missing_prints_nothing() -> None:
    # The local mesh's gateway has no external IP: kubectl prints nothing and succeeds.
    assert render("{.status.loadBalancer.ingress[0].ip}", LOCAL_INGRESS) == ""


@pytest.mark.parametrize(("name", "field", "expected"), [
    ("http2", "port", "80"), ("http2", "nodePort", "31783"), ("https", "port", "443"),
    ("tcp", "port", "31400"), ("custom-port", "port", ""),
])
def test_port_by_name_filter(name: str, field: str, expected: str) -> None:
    template = '{.spec.ports[?(@.name=="' + name + '")].' + field + "}"
    assert render(template, INGRESS) == expected


def test_pod_names_by_recursive_descent() -> None:
    assert render("{.items..metadata.name}", PODS) == \
        "sleep-78f7ddc675-pcr8h httpbin-84d967465-h564v"


def test_first_item_name() -> None:
    assert render("{.items[0].metadata.name}", PODS) == "sleep-78f7ddc675-pcr8h"


def test_range_with_newline_literal() -> None:
    template = '{range .items[*]}{.metadata.name}{"\\n"}{end}'
    assert render(template, PODS) == "sleep-78f7ddc675-pcr8h\nhttpbin-84d967465-h564v\n"


def test_nested_range_and_text_between_actions() -> None:
    template = ('{range .items[*]}{.metadata.name}:{range .spec.containers[*]} {.name}{end}'
                '{"\\n"}{end}')
    assert render(template, PODS) == ("sleep-78f7ddc675-pcr8h: sleep istio-proxy\n"
                                       "httpbin-84d967465-h564v: httpbin istio-proxy\n")


# --- the grammar ---------------------------------------------------------------------------


def test_wildcards_join_with_spaces() -> None:
    assert render("{.spec.ports[*].port}", INGRESS) == "15021 80 443 31400"
    assert render("{.metadata.labels.*}", INGRESS) == "istio-ingressgateway ingressgateway"


def test_negative_index_and_slices() -> None:
    assert render("{.spec.ports[-1].name}", INGRESS) == "tcp"
    assert render("{.spec.ports[1:3].name}", INGRESS) == "http2 https"
    assert render("{.spec.ports[::2].name}", INGRESS) == "status-port https"
    assert render("{.spec.ports[9].name}", INGRESS) == ""


def test_union_of_indexes_and_keys() -> None:
    assert render("{.spec.ports[0,2].port}", INGRESS) == "15021 443"
    assert render("{.metadata['name','namespace']}", INGRESS) == \
        "istio-ingressgateway istio-system"


def test_numeric_filters_and_existence() -> None:
    assert render("{.spec.ports[?(@.port > 400)].name}", INGRESS) == "status-port https tcp"
    assert render("{.spec.ports[?(@.port<=80)].name}", INGRESS) == "http2"
    assert render("{.spec.ports[?(@.name != 'tcp')].port}", INGRESS) == "15021 80 443"
    assert render("{.status.loadBalancer.ingress[?(@.ip)].ip}", INGRESS) == "172.19.106.241"
    # A string never equals a number, as in kubectl.
    assert render('{.spec.ports[?(@.port=="80")].name}', INGRESS) == ""


def test_maps_and_lists_print_as_compact_json() -> None:
    assert render("{.metadata.labels}", INGRESS) == \
        '{"app":"istio-ingressgateway","istio":"ingressgateway"}'
    assert render("{.status.loadBalancer.ingress}", INGRESS) == '[{"ip":"172.19.106.241"}]'


def test_scalars_print_as_kubectl_prints_them() -> None:
    data = {"a": True, "b": 100.0, "c": 0.5, "d": None}
    assert render("{.a} {.b} {.c} {.d}", data) == "true 100 0.5 <nil>"


def test_escaped_dots_and_slashes_in_keys() -> None:
    data = {"metadata": {"annotations": {"sidecar.istio.io/status": "injected"}}}
    assert render(r"{.metadata.annotations.sidecar\.istio\.io/status}", data) == "injected"
    assert render("{.metadata.annotations['sidecar.istio.io/status']}", data) == "injected"


def test_text_outside_actions_is_literal() -> None:
    assert render("port={.spec.ports[0].port}\\n", INGRESS) == "port=15021\\n"
    assert render("no actions", INGRESS) == "no actions"


def test_root_and_current() -> None:
    assert render("{$.kind}", INGRESS) == "Service"
    assert render("{range .items[*]}{$.kind}/{@.metadata.name} {end}", PODS) == \
        "List/sleep-78f7ddc675-pcr8h List/httpbin-84d967465-h564v "


@pytest.mark.parametrize("template", [
    "{.items[0.metadata.name}", "{.a", "{range .items[*]}{.a}", "{end}", "{.a[x]}",
    '{"unclosed}', "{.a b}",
])
def test_bad_templates_raise_a_parse_error(template: str) -> None:
    with pytest.raises(JSONPathError, match="error parsing jsonpath"):
        parse(template)


def test_relaxed_expressions_for_custom_columns() -> None:
    assert relaxed("metadata.name") == "{.metadata.name}"
    assert relaxed(".metadata.name") == "{.metadata.name}"
    assert relaxed("{.metadata.name}") == "{.metadata.name}"
    assert values("spec.ports[*].name", INGRESS) == ["status-port", "http2", "https", "tcp"]
