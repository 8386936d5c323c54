"""lablib.config.store: the immutable, versioned snapshot of applied resources."""

from __future__ import annotations

from lablib.config import ConfigStore, load

APP = """
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, labels: {app: reviews}}
spec:
  selector: {matchLabels: {app: reviews, version: v1}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec:
      containers: [{name: reviews, image: reviews:v1}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, labels: {app: ratings}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: ratings}
"""


def test_with_applied_returns_a_new_store_and_bumps_the_version() -> None:
    empty = ConfigStore.empty()
    store = empty.with_applied(load(APP, namespace="ns"))
    assert (len(empty), empty.version) == (0, 0)
    assert (len(store), store.version) == (3, 1)
    service = store.get("Service", "ns", "reviews")
    assert service is not None and service.spec["ports"][0]["port"] == 9080
    assert store.get("Service", "other", "reviews") is None


def test_applying_the_same_content_changes_nothing() -> None:
    store = ConfigStore.empty().with_applied(load(APP, namespace="ns"))
    assert store.with_applied(load(APP, namespace="ns")) is store


def test_replacing_keeps_creation_order_so_the_oldest_comes_first() -> None:
    store = ConfigStore.empty().with_applied(load(APP, namespace="ns"))
    changed = store.with_applied(load(APP.split("---")[0].replace("9080", "9081"), namespace="ns"))
    assert changed.version == 2
    assert [r.name for r in changed.list("Service")] == ["reviews", "ratings"]
    assert changed.list("Service")[0].spec["ports"][0]["port"] == 9081
    assert store.list("Service")[0].spec["ports"][0]["port"] == 9080  # old snapshot intact


def test_list_filters_by_kind_namespace_and_labels() -> None:
    store = ConfigStore.empty().with_applied(load(APP, namespace="a") + load(APP, namespace="b"))
    assert len(store.list("Service")) == 4
    assert [r.namespace for r in store.list("Service", "b")] == ["b", "b"]
    assert [r.key for r in store.list("Service", "a", {"app": "ratings"})] == [
        ("Service", "a", "ratings")]
    assert len(store.list()) == 6
    assert [r.name for r in store.workloads("a", {"version": "v1"})] == ["reviews-v1"]
    assert store.workloads("a", {"version": "v2"}) == []


def test_namespaces_and_their_labels() -> None:
    store = ConfigStore.with_namespaces({"default": {}, "bookinfo": {"istio-injection": "enabled"}})
    assert store.namespaces() == ["bookinfo", "default"]
    assert store.namespace_labels("bookinfo") == {"istio-injection": "enabled"}
    assert store.namespace_labels("missing") == {}
    assert ConfigStore.with_namespaces(["default"]).has_namespace("default")


def test_without_removes_by_resource_or_key_and_cascades_namespaces() -> None:
    store = ConfigStore.with_namespaces(["a", "b"]).with_applied(
        load(APP, namespace="a") + load(APP, namespace="b"))
    fewer = store.without([("Service", "a", "ratings")])
    assert fewer.get("Service", "a", "ratings") is None
    assert fewer.version == store.version + 1
    assert store.get("Service", "a", "ratings") is not None
    gone = store.without(store.list("Namespace", selector=None)[:1])  # Namespace a
    assert gone.namespaces() == ["b"]
    assert {r.namespace for r in gone} == {"", "b"}
    assert store.without([("Service", "zzz", "nothing")]) is store
