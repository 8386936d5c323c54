"""lablib.config.loader: files, folders, YAML text and dicts into Resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from lablib.config import loader
from lablib.config.loader import load, load_one
from lablib.errors import ConfigError

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: reviews
"""

VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
"""


def refused(source: object, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(source, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_multi_document_string_skips_empty_documents() -> None:
    text = "---\n" + SERVICE + "---\n---\n" + VIRTUAL_SERVICE + "---\n"
    resources = load(text, namespace="bookinfo-test")
    assert [r.key for r in resources] == [
        ("Service", "bookinfo-test", "reviews"),
        ("VirtualService", "bookinfo-test", "reviews"),
    ]
    assert resources[0].source == "<string>, document 1"
    assert resources[1].source == "<string>, document 3"  # the empty document still counts
    assert resources[1].body["metadata"]["namespace"] == "bookinfo-test"


def test_namespace_defaults() -> None:
    namespace_doc = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: foo\n"
    declared = SERVICE.replace("  name: reviews\n", "  name: reviews\n  namespace: other\n")
    ns, plain, placed = load([namespace_doc, SERVICE, declared])
    assert (ns.namespace, plain.namespace, placed.namespace) == ("", "default", "other")
    # Defaulted, not declared: the body stays free to be applied elsewhere later.
    assert "namespace" not in plain.body["metadata"]
    assert load(namespace_doc, namespace="bar")[0].namespace == ""  # cluster-scoped


def test_namespace_mismatch_is_refused_like_kubectl() -> None:
    declared = SERVICE.replace("  name: reviews\n", "  name: reviews\n  namespace: other\n")
    error = refused(declared, namespace="bookinfo-test")
    [diagnostic] = error.diagnostics
    assert diagnostic.code == "LAB0105"
    assert diagnostic.field == "metadata.namespace"
    assert ('the namespace from the provided object "other" does not match the namespace '
            '"bookinfo-test". You must pass \'--namespace=other\' to perform this operation.'
            ) in diagnostic.message
    assert "line 5" in diagnostic.message
    assert load(declared, namespace="other")[0].namespace == "other"


def test_folder_loads_yaml_files_in_sorted_order_without_recursing(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(VIRTUAL_SERVICE)
    (tmp_path / "a.yaml").write_text(SERVICE)
    (tmp_path / "notes.txt").write_text("not: yaml: at all: [")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "c.yaml").write_text(SERVICE.replace("reviews", "ratings"))
    resources = load(tmp_path)
    assert [(r.kind, r.name) for r in resources] == [
        ("Service", "reviews"), ("VirtualService", "reviews"),
    ]
    assert resources[1].source.endswith("b.yml, document 1")


def test_relative_paths_fall_back_to_the_kit_root(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    kit = tmp_path / "kit"
    (kit / "samples" / "bookinfo").mkdir(parents=True)
    (kit / "samples" / "bookinfo" / "svc.yaml").write_text(SERVICE)
    (kit / "labs").mkdir()
    monkeypatch.setattr(loader, "KIT_ROOT", kit)
    monkeypatch.chdir(kit / "labs")
    [resource] = load("samples/bookinfo/svc.yaml")
    assert resource.key == ("Service", "default", "reviews")
    assert resource.source == "samples/bookinfo/svc.yaml, document 1"
    [again] = load("svc.yaml", base_dir=kit / "samples" / "bookinfo")
    assert again.key == resource.key


def test_real_sample_path_works_from_labs(kit_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = kit_root / "samples" / "bookinfo" / "platform" / "kube" / "bookinfo.yaml"
    if not sample.exists():
        pytest.skip("samples/bookinfo not written yet")
    monkeypatch.chdir(kit_root / "labs")
    resources = load("samples/bookinfo/platform/kube/bookinfo.yaml", namespace="bookinfo-test")
    assert ("Service", "bookinfo-test", "productpage") in {r.key for r in resources}


def test_missing_file_is_named() -> None:
    [diagnostic] = refused("samples/no-such-file.yaml").diagnostics
    assert diagnostic.code == "LAB0100"
    assert "samples/no-such-file.yaml" in diagnostic.message


def test_invalid_yaml_names_document_line_and_column() -> None:
    broken = SERVICE + "---\n" + "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   bad: 1\n"
    [diagnostic] = refused(broken).diagnostics
    assert diagnostic.code == "LAB0103"
    assert diagnostic.resource == "<string>, document 2"
    # Lines count from the top of the text, as an editor shows them (SERVICE has 10 lines).
    assert "line 16, column 7" in diagnostic.message
    assert "line 16" in diagnostic.fix


def test_invalid_yaml_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vs.yaml"
    path.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n\tname: x\n")
    [diagnostic] = refused(path).diagnostics
    assert diagnostic.resource == f"{path}, document 1"
    assert "line 4" in diagnostic.message
    assert "tabs" in diagnostic.fix


def test_unknown_kind_lists_supported_kinds() -> None:
    [diagnostic] = refused(SERVICE.replace("kind: Service", "kind: Servise")).diagnostics
    assert diagnostic.code == "LAB0102"
    assert diagnostic.field == "kind"
    assert 'unknown kind "Servise"; did you mean "Service"?' in diagnostic.message
    for kind in ("VirtualService", "DestinationRule", "Gateway", "PeerAuthentication"):
        assert kind in diagnostic.message
    assert "line 2" in diagnostic.message


def test_unknown_api_version_is_refused() -> None:
    text = VIRTUAL_SERVICE.replace("networking.istio.io/v1alpha3", "networking.istio.io/v2")
    [diagnostic] = refused(text).diagnostics
    assert diagnostic.code == "LAB0102"
    assert 'no matches for kind "VirtualService" in version "networking.istio.io/v2"' in (
        diagnostic.message)
    assert "networking.istio.io/v1beta1" in diagnostic.fix


@pytest.mark.parametrize("field, text", [
    ("apiVersion", SERVICE.replace("apiVersion: v1\n", "")),
    ("kind", SERVICE.replace("kind: Service\n", "")),
    ("metadata.name", SERVICE.replace("  name: reviews\n", "  labels: {app: reviews}\n")),
])
def test_missing_identity_fields_are_named(field: str, text: str) -> None:
    diagnostics = refused(text).diagnostics
    assert [d.field for d in diagnostics if d.code == "LAB0104"] == [field]
    assert f'missing required field "{field}"' in diagnostics[0].message


def test_misindented_manifest_explains_where_fields_belong() -> None:
    # The walkthrough's circuit-breaker manifest lost its indentation like this.
    text = ("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n"
            "name: httpbin\nspec:\nhost: httpbin\n")
    diagnostics = refused(text).diagnostics
    fixes = {d.field: d.fix for d in diagnostics}
    assert fixes["name"] == 'indent "name" under metadata:'
    assert fixes["host"] == 'indent "host" under spec:'


def test_kind_list_is_flattened() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n"
            "- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: a}\n"
            "- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: b}\n")
    assert [r.name for r in load(text, namespace="x")] == ["a", "b"]


def test_dict_source_is_not_mutated() -> None:
    body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sleep"}}
    [resource] = load(body, namespace="foo")
    assert resource.namespace == "foo"
    assert "namespace" not in body["metadata"]


def test_schema_errors_carry_yaml_lines_and_nothing_loads() -> None:
    text = SERVICE + "---\n" + VIRTUAL_SERVICE.replace("        subset: v1\n",
                                                       "        subset: v1\n      weigth: 50\n")
    [diagnostic] = refused(text).diagnostics
    assert diagnostic.field == "spec.http[0].route[0].weigth"
    assert diagnostic.message.endswith("(<string>, document 2, line 24)")


def test_load_one() -> None:
    assert load_one(SERVICE).name == "reviews"
    with pytest.raises(ConfigError, match="exactly one manifest, found 2"):
        load_one([SERVICE, VIRTUAL_SERVICE])
