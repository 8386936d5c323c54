"""The fidelity ledger: every field the schema accepts has a status, every translated field
has a builder and a test showing its effect, and apply says what the ledger says."""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

import pytest

from lablib.config import fidelity
from lablib.config.injection import injected
from lablib.config.loader import load
from lablib.config.schema import ISTIO_KINDS, SCHEMAS, check_kind

ROOT = Path(__file__).resolve().parents[1]


def all_rows():
    return [(kind, path, entry) for kind in fidelity.LEDGER
            for path, entry, _ in fidelity.rows(kind)]


def test_every_kind_the_schema_accepts_has_a_ledger():
    assert set(SCHEMAS) == set(fidelity.LEDGER)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_accepted_path_is_in_the_ledger(kind):
    missing = [path for path in fidelity.schema_paths(SCHEMAS[kind])
               if fidelity.resolved(kind, path) is None]
    assert not missing, f"{kind}: add these paths to lablib/config/fidelity.py: {missing}"


def test_the_ledger_lists_no_path_the_schema_does_not_accept():
    for kind, ledger in fidelity.LEDGER.items():
        accepted = set(fidelity.schema_paths(SCHEMAS[kind]))
        for path in ledger:
            field = path.split('["')[0]
            assert field in accepted, f"{kind}: {path} is not a field of the schema"


def test_only_kubernetes_kinds_call_a_field_a_kubernetes_detail():
    for kind, path, entry in all_rows():
        if kind in ISTIO_KINDS and entry.status == fidelity.KUBERNETES:
            assert path in ("status", "metadata.annotations"), f"{kind} {path}"


@cache
def defined_functions(relative: str) -> frozenset[str]:
    tree = ast.parse((ROOT / relative).read_text())
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))


def test_every_translated_path_names_a_builder_that_exists_and_a_test_of_its_effect():
    for kind, path, entry in all_rows():
        if entry.status != fidelity.TRANSLATED:
            continue
        module_name, _, attribute = entry.note.rpartition(".")
        parts = [module_name, attribute]
        while True:
            try:
                target = importlib.import_module(parts[0])
                break
            except ModuleNotFoundError:
                head, _, tail = parts[0].rpartition(".")
                parts = [head, tail, *parts[1:]]
        for name in parts[1:]:
            target = getattr(target, name)  # AttributeError names a builder that is gone
        file, _, test = entry.test.partition("::")
        assert test in defined_functions(file), f"{kind} {path}: no test {entry.test}"


def test_docs_fidelity_md_is_generated_from_the_ledger():
    assert fidelity.DOC.read_text() == fidelity.markdown(), \
        "run: python -m lablib.config.fidelity"


def diagnostics_of(text: str):
    return [d for r in load(text, namespace="default") for d in fidelity.diagnostics(r)]


def test_the_issues_examples_are_translated_now():
    found = diagnostics_of("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - match: [{sourceLabels: {app: sleep}}]
    route: [{destination: {host: httpbin, subset: v1}}]
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100}
""")
    assert found == []


def test_a_refused_field_is_named_with_its_resource_and_the_cluster_that_does_it():
    found = diagnostics_of("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pods}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: api}}
""")
    [refused] = [d for d in found if d.severity == "Error"]
    assert refused.field == "spec.workloadSelector"
    text = str(refused)
    assert "not supported on the local mesh" in text and "LAB_BACKEND=kubernetes" in text
    assert "ServiceEntry default/pods" in text


def test_tuning_knobs_warn_and_locality_has_no_local_meaning():
    found = diagnostics_of("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1, idleTimeout: 1h}}
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}
""")
    by_field = {d.field: (d.severity, d.code) for d in found}
    assert by_field == {
        "spec.trafficPolicy.connectionPool.tcp.idleTimeout": ("Warning", "LAB0402"),
        "spec.trafficPolicy.loadBalancer.localityLbSetting": ("Warning", "LAB0403"),
    }


@pytest.mark.parametrize("value, ok", [(301, True), (308, True), (300, False)])
def test_a_redirect_code_envoy_cannot_send_is_refused(value, ok):
    found = diagnostics_of(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r}}
spec:
  hosts: [r]
  http:
  - redirect: {{uri: /x, redirectCode: {value}}}
""")
    assert (found == []) == ok
    if not ok:
        assert found[0].field == "spec.http[0].redirect.redirectCode"
        assert "301, 302, 303, 307, 308" in found[0].message


def test_delegate_is_refused_before_it_reaches_envoy():
    found = diagnostics_of("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  http:
  - delegate: {name: reviews, namespace: default}
""")
    assert [(d.field, d.severity) for d in found] == [("spec.http[0].delegate", "Error")]


def test_a_value_with_its_own_entry_is_decided_by_it():
    found = diagnostics_of("""
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
""")
    assert {d.field for d in found if d.severity == "Error"} == {"spec.type", "spec.externalName"}


def test_istio_annotations_without_a_local_meaning_are_named():
    found = diagnostics_of("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata:
      labels: {app: app, istio.io/rev: canary}
      annotations:
        proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true}'
        sidecar.istio.io/proxyCPU: 100m
        traffic.sidecar.istio.io/excludeOutboundPorts: "443"
        prometheus.io/scrape: "true"
    spec:
      containers: [{name: app, image: docker.io/kennethreitz/httpbin}]
""")
    fields = {d.field: d.severity for d in found}
    assert fields == {
        'spec.template.metadata.labels["istio.io/rev"]': "Error",
        'spec.template.metadata.annotations["proxy.istio.io/config"]'
        '.holdApplicationUntilProxyStarts': "Error",
        'spec.template.metadata.annotations["sidecar.istio.io/proxyCPU"]': "Error",
        'spec.template.metadata.annotations["traffic.sidecar.istio.io/excludeOutboundPorts"]':
            "Warning",
    }


def test_istio_io_rev_injects_for_the_default_revision_only():
    assert injected({"istio.io/rev": "default"}, {}, {})
    assert injected({}, {"istio.io/rev": "default"}, {})
    assert not injected({"istio.io/rev": "default", "istio-injection": "disabled"}, {}, {})
    assert not injected({"istio.io/rev": "canary"}, {}, {})
    assert injected({"istio-injection": "enabled"}, {}, {})
    assert not injected({"istio-injection": "enabled"}, {"sidecar.istio.io/inject": "false"}, {})
    assert not injected({"istio-injection": "enabled"}, {},
                        {"sidecar.istio.io/inject": "false"})
    assert injected({}, {"sidecar.istio.io/inject": "true"}, {})
    assert not injected({}, {}, {"sidecar.istio.io/inject": "true"})  # the webhook never runs
    canary = diagnostics_of("""
apiVersion: v1
kind: Namespace
metadata: {name: lab, labels: {istio.io/rev: canary}}
""")
    assert [(d.field, d.severity) for d in canary] == [('metadata.labels["istio.io/rev"]',
                                                        "Error")]
    assert diagnostics_of("""
apiVersion: v1
kind: Namespace
metadata: {name: lab, labels: {istio.io/rev: default}}
""") == []


def test_the_shipped_samples_apply_without_a_word():
    for path in [*sorted((ROOT / "samples").rglob("*.yaml")),
                 ROOT / "lablib/local/istio_system.yaml"]:
        for resource in load(str(path)):
            assert fidelity.diagnostics(resource) == [], path


@pytest.mark.parametrize("kind, api_version", [
    ("EnvoyFilter", "networking.istio.io/v1alpha3"),
    ("WasmPlugin", "extensions.istio.io/v1alpha1"),
    ("Gateway", "gateway.networking.k8s.io/v1"),
    ("HTTPRoute", "gateway.networking.k8s.io/v1"),
])
def test_kinds_not_served_yet_say_so_without_a_cross_api_suggestion(kind, api_version):
    found = check_kind(kind, api_version, f"{kind} default/x")
    assert found is not None and found.code == "LAB0405"
    assert f"{kind} ({api_version.rpartition('/')[0]}) is not served by the local mesh yet" \
        in found.message and "LAB_BACKEND=kubernetes" in found.message
    assert "did you mean" not in found.message and "apiVersion" not in found.fix


def test_a_typo_is_suggested_only_within_its_api_group():
    typo = check_kind("VirtualSerivce", "networking.istio.io/v1", "x")
    assert typo is not None and 'did you mean "VirtualService"' in typo.message
    other = check_kind("PeerAuthenticatio", "example.com/v1", "x")
    assert other is not None and "did you mean" not in other.message


def sidecar_tls_store(with_secrets: bool):
    from lablib.config import ConfigStore, analyze
    from lablib.config.loader import load as load_manifests
    docs = load_manifests(str(ROOT / "samples/tls-termination/httpbin-sidecar-tls.yaml"),
                          namespace="tls")
    secrets = [] if not with_secrets else load_manifests("""
apiVersion: v1
kind: Secret
metadata: {name: httpbin-svc-secret}
stringData: {tls.crt: x, tls.key: y}
---
apiVersion: v1
kind: Secret
metadata: {name: ca-secret}
stringData: {ca.crt: z}
""", namespace="tls")
    namespace = load_manifests("apiVersion: v1\nkind: Namespace\nmetadata: {name: tls, labels: "
                               "{istio-injection: enabled}}\n")
    store = ConfigStore.with_namespaces([]).with_applied([*namespace, *docs, *secrets])
    return [d for d in analyze(store) if d.code == "LAB0409"]


def test_sidecar_ingress_tls_files_the_proxy_does_not_mount_are_named():
    found = sidecar_tls_store(with_secrets=False)
    assert {d.field for d in found} == {"spec.ingress[0].tls.serverCertificate",
                                        "spec.ingress[0].tls.privateKey",
                                        "spec.ingress[0].tls.caCertificates"}
    assert all(d.severity == "Error" and "userVolume" in d.fix for d in found)
    assert sidecar_tls_store(with_secrets=True) == []


def test_every_meshconfig_key_the_kit_reads_has_a_status():
    from lablib.config.meshconfig import KEYS
    assert set(fidelity.MESH_CONFIG) == {*KEYS, "extensionProviders"}
    for key, entry in fidelity.MESH_CONFIG.items():
        if entry.status == fidelity.TRANSLATED:
            file, _, test = entry.test.partition("::")
            assert test in defined_functions(file), key


def test_what_kube_inject_added_is_left_to_the_meshs_own_sidecar():
    from lablib.shims.istioctl import kube_inject
    injected = kube_inject((ROOT / "samples/httpbin/httpbin.yaml").read_text())
    assert "istio-init" in injected
    assert diagnostics_of(injected) == []
    # an init container of the app's own is still refused
    own = injected.replace("name: istio-init", "name: wait-for-db")
    assert [d.field for d in diagnostics_of(own)] == ["spec.template.spec.initContainers"]


TCP_RULE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: ["*"]
  {gateways}
  tcp:
  - match: [{{port: 31400}}]
    route: [{{destination: {{host: tcp-echo, port: {{number: 9000}}}}}}]
"""


@pytest.mark.parametrize("gateways", [
    "gateways: [tcp-echo-gateway]", "", "gateways: [mesh, tcp-echo-gateway]"])
def test_tcp_rules_apply_at_sidecars_and_gateways_alike(gateways):
    assert diagnostics_of(TCP_RULE.format(gateways=gateways)) == []


def test_a_sidecars_ingress_tls_reads_files_not_credentials():
    found = diagnostics_of("""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ingress}
spec:
  ingress:
  - port: {number: 9443, protocol: HTTPS, name: external}
    defaultEndpoint: 0.0.0.0:80
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
""")
    assert [(d.field, d.severity) for d in found] == [
        ("spec.ingress[0].tls.credentialName", "Error")]


def test_a_kind_the_local_mesh_does_not_serve_loads_for_a_cluster_and_is_refused_locally():
    [resource] = load("""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua}
spec: {configPatches: []}
""", namespace="default")
    [found] = fidelity.diagnostics(resource)
    assert found.code == "LAB0405" and "EnvoyFilter" in found.message


@pytest.mark.parametrize("namespace, pod, expected", [
    ({"istio-injection": "disabled"}, {"sidecar.istio.io/inject": "true"}, False),
    ({"istio-injection": "enabled"}, {"istio.io/rev": "default"}, True),
    ({"istio.io/rev": "default"}, {"sidecar.istio.io/inject": "true"}, True),
    ({}, {"istio.io/rev": "default", "sidecar.istio.io/inject": "false"}, False),
])
def test_injection_follows_the_default_revisions_webhooks(namespace, pod, expected):
    assert injected(namespace, pod, {}) is expected
