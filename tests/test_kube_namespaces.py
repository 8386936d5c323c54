"""LAB_NAMESPACE_PREFIX: the rewriting of namespace names and references, both ways."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lablib.kube.namespaces import NamespacePrefix, PrefixError, normalise, rewrite_host

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").rglob("*.yaml"))
ALICE = NamespacePrefix("alice")


def test_the_prefix_is_normalised_and_checked() -> None:
    assert normalise("alice") == normalise("alice-") == "alice-"
    assert normalise("") == normalise(None) == normalise("  ") == ""
    for bad in ("Alice", "al ice", "-alice", "alice_1", "a/b"):
        with pytest.raises(PrefixError, match="LAB_NAMESPACE_PREFIX"):
            normalise(bad)


def test_names_are_prefixed_except_system_namespaces_and_wildcards() -> None:
    assert ALICE.to_cluster("bookinfo-test") == "alice-bookinfo-test"
    assert ALICE.to_cluster("default") == "alice-default"
    for kept in ("istio-system", "kube-system", "kube-public", "kube-node-lease", "*", ".", "~"):
        assert ALICE.to_cluster(kept) == kept
        assert ALICE.to_lab(kept) == kept


def test_names_come_back_only_for_this_learner() -> None:
    assert ALICE.to_lab("alice-bookinfo-test") == "bookinfo-test"
    assert ALICE.to_lab("bob-bookinfo-test") is None
    assert ALICE.to_lab("bookinfo-test") is None  # unprefixed: someone else's
    assert ALICE.to_lab("alice-") is None
    assert ALICE.is_ours("istio-system") and not ALICE.is_ours("default")


def test_too_long_a_name_is_refused_with_the_limit() -> None:
    with pytest.raises(PrefixError, match="63"):
        NamespacePrefix("a" * 40).to_cluster("b" * 30)


def test_without_a_prefix_nothing_changes() -> None:
    none = NamespacePrefix("")
    body = {"kind": "VirtualService", "metadata": {"namespace": "x"},
            "spec": {"hosts": ["r.x.svc.cluster.local"]}}
    assert none.manifest_to_cluster(body) is body and none.manifest_to_lab(body) is body
    assert none.to_cluster("x") == "x" and none.to_lab("anything") == "anything"
    assert not none and ALICE


@pytest.mark.parametrize(("host", "expected"), [
    ("reviews.bookinfo-test.svc.cluster.local", "reviews.alice-bookinfo-test.svc.cluster.local"),
    ("reviews.bookinfo-test.svc", "reviews.alice-bookinfo-test.svc"),
    ("*.bookinfo-test.svc.cluster.local", "*.alice-bookinfo-test.svc.cluster.local"),
    ("bookinfo-test/*", "alice-bookinfo-test/*"),
    ("bookinfo-test/reviews.bookinfo-test.svc.cluster.local",
     "alice-bookinfo-test/reviews.alice-bookinfo-test.svc.cluster.local"),
    ("istio-system/*", "istio-system/*"),
    ("./*", "./*"),
    ("*/httpbin.example.com", "*/httpbin.example.com"),
    ("reviews", "reviews"),
    ("reviews.bookinfo-test", "reviews.bookinfo-test"),  # no .svc: not recognised (a limit)
    ("www.google.com", "www.google.com"),
    ("istiod.istio-system.svc", "istiod.istio-system.svc"),
    ("*", "*"),
    ("mesh", "mesh"),
])
def test_host_references(host: str, expected: str) -> None:
    assert rewrite_host(host, ALICE.to_cluster) == expected
    assert rewrite_host(expected, lambda ns: ALICE.to_lab(ns) or ns) == host


def test_a_virtual_service_is_rewritten_in_its_namespace_fields_only() -> None:
    vs = {
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "bookinfo-test",
                     "labels": {"team": "bookinfo-test"}},
        "spec": {
            "hosts": ["reviews.bookinfo-test.svc.cluster.local"],
            "gateways": ["bookinfo-test/bookinfo-gateway", "mesh", "istio-system/shared"],
            "exportTo": [".", "frontend"],
            "http": [{
                "match": [{"headers": {"x-ns": {"exact": "r.bookinfo-test.svc.cluster.local"}},
                           "sourceNamespace": "frontend", "gateways": ["bookinfo-gateway"]}],
                "route": [{"destination": {"host": "reviews.bookinfo-test.svc.cluster.local",
                                           "subset": "v1"}}],
                "mirror": {"host": "ratings.bookinfo-test.svc"},
                "headers": {"request": {"set": {"x-from": "bookinfo-test/ns"}}},
            }],
            "delegate": {"name": "sub", "namespace": "bookinfo-test"},
        },
        "status": {"note": "reviews.bookinfo-test.svc.cluster.local"},
    }
    original = copy.deepcopy(vs)
    out = ALICE.manifest_to_cluster(vs)
    assert vs == original  # the input is not touched
    spec = out["spec"]
    assert out["metadata"]["namespace"] == "alice-bookinfo-test"
    assert out["metadata"]["labels"] == {"team": "bookinfo-test"}
    assert spec["hosts"] == ["reviews.alice-bookinfo-test.svc.cluster.local"]
    assert spec["gateways"] == ["alice-bookinfo-test/bookinfo-gateway", "mesh",
                                "istio-system/shared"]
    assert spec["exportTo"] == [".", "alice-frontend"]
    http = spec["http"][0]
    assert http["match"][0]["headers"] == original["spec"]["http"][0]["match"][0]["headers"]
    assert http["match"][0]["sourceNamespace"] == "alice-frontend"
    assert http["match"][0]["gateways"] == ["bookinfo-gateway"]
    assert http["route"][0]["destination"] == {
        "host": "reviews.alice-bookinfo-test.svc.cluster.local", "subset": "v1"}
    assert http["mirror"]["host"] == "ratings.alice-bookinfo-test.svc"
    assert http["headers"] == original["spec"]["http"][0]["headers"]
    assert spec["delegate"] == {"name": "sub", "namespace": "alice-bookinfo-test"}
    assert out["status"] == original["status"]
    assert ALICE.manifest_to_lab(out) == original


def test_gateways_sidecars_policies_and_namespaces() -> None:
    gateway = {"kind": "Gateway", "metadata": {"name": "gw"},
               "spec": {"selector": {"istio": "ingressgateway"},
                        "servers": [{"hosts": ["bookinfo-test/*", "*/example.com"]}]}}
    assert ALICE.manifest_to_cluster(gateway)["spec"]["servers"][0]["hosts"] == [
        "alice-bookinfo-test/*", "*/example.com"]
    assert "namespace" not in ALICE.manifest_to_cluster(gateway)["metadata"]
    sidecar = {"kind": "Sidecar", "metadata": {"name": "default", "namespace": "foo"},
               "spec": {"egress": [{"hosts": ["./*", "istio-system/*", "bar/*"]}]}}
    assert ALICE.manifest_to_cluster(sidecar)["spec"]["egress"][0]["hosts"] == [
        "./*", "istio-system/*", "alice-bar/*"]
    policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "foo"},
              "spec": {"rules": [{"from": [{"source": {
                  "principals": ["cluster.local/ns/foo/sa/sleep", "*/ns/istio-system/sa/x"],
                  "namespaces": ["bar"], "notNamespaces": ["baz"]}}]}]}}
    source = ALICE.manifest_to_cluster(policy)["spec"]["rules"][0]["from"][0]["source"]
    assert source == {"principals": ["cluster.local/ns/alice-foo/sa/sleep",
                                     "*/ns/istio-system/sa/x"],
                      "namespaces": ["alice-bar"], "notNamespaces": ["alice-baz"]}
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "bookinfo-test", "labels": {"istio-injection": "enabled"}}}
    assert ALICE.manifest_to_cluster(namespace)["metadata"] == {
        "name": "alice-bookinfo-test", "labels": {"istio-injection": "enabled"}}
    external = {"kind": "Service", "metadata": {"name": "db", "namespace": "foo"},
                "spec": {"type": "ExternalName", "externalName": "db.data.svc.cluster.local"}}
    assert ALICE.manifest_to_cluster(external)["spec"]["externalName"] == (
        "db.alice-data.svc.cluster.local")


def test_user_data_is_never_rewritten() -> None:
    config_map = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "foo"},
                  "data": {"namespace": "foo", "host": "a.foo.svc.cluster.local"}}
    out = ALICE.manifest_to_cluster(config_map)
    assert out["data"] == config_map["data"] and out["metadata"]["namespace"] == "alice-foo"
    deployment = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {
        "containers": [{"name": "c", "env": [{"name": "UPSTREAM",
                                              "value": "http://a.foo.svc.cluster.local"}]}]}}}}
    assert ALICE.manifest_to_cluster(deployment) == deployment


def test_other_learners_names_are_left_as_they_are_on_the_way_back() -> None:
    vs = {"kind": "VirtualService", "metadata": {"name": "r", "namespace": "alice-x"},
          "spec": {"hosts": ["r.bob-x.svc.cluster.local", "r.alice-x.svc.cluster.local"]}}
    assert ALICE.manifest_to_lab(vs)["spec"]["hosts"] == ["r.bob-x.svc.cluster.local",
                                                          "r.x.svc.cluster.local"]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_sample_goes_there_and_back_unchanged(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        doc.setdefault("metadata", {})["namespace"] = "bookinfo-test"
        there = ALICE.manifest_to_cluster(doc)
        assert there["metadata"]["namespace"] == "alice-bookinfo-test"
        assert ALICE.manifest_to_lab(there) == doc


def test_proxy_text_loses_the_prefix() -> None:
    text = ('"name": "outbound|9080|v1|reviews.alice-bookinfo-test.svc.cluster.local", '
            '"config": "/apis/networking.istio.io/v1alpha3/namespaces/alice-bookinfo-test/'
            'virtual-service/reviews", '
            '"san": "spiffe://cluster.local/ns/alice-bookinfo-test/sa/x", '
            '"other": "reviews.bob-bookinfo-test.svc.cluster.local", "domain": "alice-x.example"')
    assert ALICE.text_to_lab(text) == (
        '"name": "outbound|9080|v1|reviews.bookinfo-test.svc.cluster.local", '
        '"config": "/apis/networking.istio.io/v1alpha3/namespaces/bookinfo-test/'
        'virtual-service/reviews", '
        '"san": "spiffe://cluster.local/ns/bookinfo-test/sa/x", '
        '"other": "reviews.bob-bookinfo-test.svc.cluster.local", "domain": "alice-x.example"')
