"""A corpus of bad input on a real mesh: each one refused with a message that names the
resource, the field and a fix, while traffic keeps following the last good config
(Bookinfo with everyone on reviews v1 and the user jason on v2).

The manifests live in tests/bad_inputs/ (its README explains the `# expect:` lines); the
certificate cases are built here because their PEM data has to be generated. Wrong command
lines of the `lablib` CLI and of the kubectl/istioctl shims close the module.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import lablib
from lablib import certs, traffic
from lablib.errors import Diagnostic

pytestmark = pytest.mark.envoy
NS = "bookinfo-test"
CORPUS = Path(__file__).with_name("bad_inputs")
BOOKINFO = "samples/bookinfo/platform/kube/bookinfo.yaml"
GOOD_CONFIG = [
    "samples/bookinfo/networking/bookinfo-gateway.yaml",
    "samples/bookinfo/networking/destination-rule-all.yaml",
    "samples/bookinfo/networking/virtual-service-all-v1.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml",
]
CONFIG_KINDS = ("Namespace", "Service", "Deployment", "Secret", "Gateway", "VirtualService",
                "DestinationRule", "PeerAuthentication")
HOST = "bookinfo.example.com"
CREDENTIAL = "bookinfo-credential"
DIRECTIVE = re.compile(r"^# (expect|fix-mentions|apply-with|known-bug): (.*)$", re.MULTILINE)

Pki = dict[str, bytes]
Manifests = list[dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One bad input and what its refusal must say."""

    name: str
    code: str
    resource: str  # text the diagnostic's resource must contain
    field: str  # text its field must contain; "" = no field (YAML syntax), the line instead
    fix_mentions: str
    source: Path | Callable[[Pki], Manifests]
    namespace: str | None = None
    known_bug: str = ""


def corpus_case(path: Path) -> Case:
    """The Case a corpus file describes in its `# expect:` and other directives."""
    found = dict(DIRECTIVE.findall(path.read_text()))
    code, resource, field = (part.strip() for part in found["expect"].split("|"))
    namespace = found.get("apply-with", "").strip().removeprefix("namespace=") or None
    return Case(path.stem, code, resource, "" if field == "-" else field,
                found["fix-mentions"].strip(), path, namespace, found.get("known-bug", ""))


# --- certificate cases ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tls_secret(cert: bytes, key: bytes) -> dict[str, Any]:
    """`kubectl create -n istio-system secret tls bookinfo-credential`, without any checks."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": CREDENTIAL, "namespace": "istio-system"},
            "data": {"tls.crt": _b64(cert), "tls.key": _b64(key)}}


def _secure_gateway(mode: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
            "metadata": {"name": "secure-gateway", "namespace": NS},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "tls": {"mode": mode, "credentialName": CREDENTIAL}, "hosts": [HOST]}]}}


def mutual_without_client_ca(pki: Pki) -> Manifests:
    return [_tls_secret(pki["cert"], pki["key"]), _secure_gateway("MUTUAL")]


def key_of_another_certificate(pki: Pki) -> Manifests:
    return [_tls_secret(pki["cert"], pki["other-key"]), _secure_gateway("SIMPLE")]


def expired_certificate(pki: Pki) -> Manifests:
    return [_tls_secret(pki["expired-cert"], pki["expired-key"]), _secure_gateway("SIMPLE")]


def configmap_over_one_mebibyte(_: Pki) -> Manifests:
    """1.1 MiB of data: Kubernetes keeps at most 1 MiB in a ConfigMap (meshd once kept 50 MB)."""
    return [{"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "big", "namespace": NS},
             "data": {f"part-{i}": "x" * 1024 for i in range(1100)}}]


GATEWAY_REF = f"Gateway {NS}/secure-gateway"
CREDENTIAL_FIELD = "spec.servers[0].tls.credentialName"
CASES = [corpus_case(path) for path in sorted(CORPUS.glob("*.yaml"))] + [
    Case("tls-mutual-without-ca-crt", "LAB0221", GATEWAY_REF, "spec.servers[0].tls.mode",
         "ca.crt", mutual_without_client_ca),
    Case("tls-key-of-another-certificate", "LAB0222", GATEWAY_REF, CREDENTIAL_FIELD,
         "new certificate", key_of_another_certificate),
    Case("tls-certificate-expired", "LAB0223", GATEWAY_REF, CREDENTIAL_FIELD,
         "new certificate", expired_certificate),
    Case("configmap-over-one-mebibyte", "LAB0101", f"ConfigMap {NS}/big", "data", "1 MiB",
         configmap_over_one_mebibyte),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """Server certificates for HOST from one root: a good pair, another pair, an expired pair."""
    folder = tmp_path_factory.mktemp("pki")
    root = certs.RootCA.load_or_create(folder / "ca")
    good = certs.issue_server(root, [HOST], folder, stem="good")
    other = certs.issue_server(root, [HOST], folder, stem="other")
    now = datetime.now(UTC)
    expired = certs.issue_server(root, [HOST], folder, stem="expired",
                                 not_before=now - timedelta(days=10),
                                 not_after=now - timedelta(days=1))
    pairs = {"": good, "other-": other, "expired-": expired}
    out = {f"{prefix}cert": cert.read_bytes() for prefix, (cert, _) in pairs.items()}
    out.update({f"{prefix}key": key.read_bytes() for prefix, (_, key) in pairs.items()})
    return out


# --- the mesh and its last good config ------------------------------------------------------


def assert_last_good_config(mesh: lablib.Backend) -> None:
    """jason is routed to reviews v2, everyone else to v1, every page a 200."""
    jason = traffic.send(mesh, n=4, user="jason")
    others = traffic.send(mesh, n=4)
    seen = {"jason": sorted(set(jason.version)), "others": sorted(set(others.version)),
            "statuses": sorted(set(jason.status) | set(others.status))}
    assert seen == {"jason": ["v2"], "others": ["v1"], "statuses": [200]}, seen


def stored_config(mesh: lablib.Backend) -> dict[tuple[str, str, str], str]:
    """Every stored resource of the kinds the corpus touches, without its live status."""
    config = {}
    for kind in CONFIG_KINDS:
        for item in mesh.get(kind):
            meta = item["metadata"]
            body = {key: value for key, value in item.items() if key != "status"}
            config[(kind, meta.get("namespace", ""), meta["name"])] = json.dumps(
                body, sort_keys=True)
    return config


def restore_last_good_config(mesh: lablib.Backend,
                             before: dict[tuple[str, str, str], str]) -> None:
    """Undo an input that was wrongly accepted, so the next cases start from the good config."""
    now = stored_config(mesh)
    for key in set(now) - set(before):
        mesh.delete(json.loads(now[key]))
    mesh.apply(BOOKINFO, namespace=NS)
    for path in GOOD_CONFIG:
        mesh.apply(path, namespace=NS)


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """A mesh of its own with Bookinfo, all-v1 and jason -> v2: the last good config."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LAB_MESH", "hardening-corpus")
        env.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("corpus")))
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply(BOOKINFO, namespace=NS)
            for path in GOOD_CONFIG:
                mesh.apply(path, namespace=NS)
            assert_last_good_config(mesh)
            yield mesh
        finally:
            mesh.uninstall()


def explain(diagnostics: list[Diagnostic]) -> str:
    return "\n".join(f"  {d.code} | {d.resource} | {d.field} | {d.message} | fix: {d.fix}"
                     for d in diagnostics) or "  (no diagnostics)"


def _params() -> list[Any]:
    marks = {c.name: [pytest.mark.xfail(reason=c.known_bug, strict=True)] if c.known_bug else []
             for c in CASES}
    return [pytest.param(case, id=case.name, marks=marks[case.name]) for case in CASES]


def test_the_corpus_has_at_least_forty_inputs():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused_clearly_and_traffic_keeps_the_last_good_config(routed, pki, case):
    source = case.source if isinstance(case.source, Path) else case.source(pki)
    before = stored_config(routed)
    try:
        routed.apply(source, namespace=case.namespace)
    except lablib.ConfigError as exc:
        refused = exc
    else:
        restore_last_good_config(routed, before)
        pytest.fail(f"{case.name} was accepted; expected {case.code}")

    errors = [d for d in refused.diagnostics if d.severity == "Error"]
    named = [d for d in errors if d.code == case.code and case.resource in d.resource
             and (case.field in d.field if case.field else not d.field)]
    assert named, f"no {case.code} naming {case.resource} / {case.field or '(line)'}:\n" \
                  f"{explain(errors)}"
    shown = str(refused)
    for diagnostic in named:
        assert diagnostic.message and diagnostic.fix
        assert diagnostic.resource in shown and diagnostic.field in shown
        if not case.field and case.code == "LAB0103":  # a YAML error gives its line
            assert re.search(r"line \d+", diagnostic.message), diagnostic.message
    assert any(case.fix_mentions in d.fix for d in named), \
        f"no fix mentions {case.fix_mentions!r}:\n{explain(named)}"
    assert stored_config(routed) == before, "a refused apply changed the stored config"
    assert_last_good_config(routed)


def test_cacerts_missing_a_file_refuses_install_and_the_mesh_keeps_serving(routed, tmp_path):
    """Istio's plug-in CA task with cert-chain.pem left out: istiod cannot start with it."""
    root = certs.RootCA.load_or_create(tmp_path / "root")
    certs.intermediate_ca(root, "cluster1", tmp_path / "cluster1")
    files = {name: (tmp_path / "cluster1" / name).read_bytes()
             for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem")}
    secret = certs.generic_secret("cacerts", "istio-system", files)
    routed.apply(dict(secret))  # a Secret is only data until istiod reads it
    try:
        with pytest.raises(lablib.ConfigError) as refused:
            routed.install()
        [diagnostic] = [d for d in refused.value.diagnostics if d.severity == "Error"]
        assert diagnostic.code == "LAB0230"
        assert diagnostic.resource == "Secret istio-system/cacerts"
        assert diagnostic.field == "data"
        assert "cert-chain.pem" in diagnostic.message
        assert "--from-file" in diagnostic.fix
        assert routed.call("ping")["installed"]  # type: ignore[attr-defined]
        assert all(row["ok"] for row in routed.verify_install())
        assert_last_good_config(routed)
    finally:
        routed.delete(dict(secret))
    assert_last_good_config(routed)


# --- wrong command lines ----------------------------------------------------------------------

CLI_CASES = {
    "no-command": ([], 2, "the following arguments are required: command"),
    "unknown-command": (["frob"], 2, "invalid choice: 'frob'"),
    "unknown-flag": (["down", "--bogus"], 2, "unrecognized arguments: --bogus"),
    "extra-argument": (["status", "extra"], 2, "unrecognized arguments: extra"),
    "invalid-mesh-name": (["down", "../etc"], 1, "is not a valid mesh name"),
}


def run_module(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_wrong_lablib_usage_explains_itself_without_a_traceback(case):
    argv, code, says = CLI_CASES[case]
    result = run_module("lablib.cli", argv)
    assert result.returncode == code, result
    assert says in result.stderr
    if code == 2:
        assert result.stderr.startswith("usage: lablib")
    assert "Traceback" not in result.stdout + result.stderr


HAS_SHIMS = importlib.util.find_spec("lablib.shims") is not None
SHIM_CASES = {
    "no-tool": (["frob"], 2, "usage: python -m lablib.shims kubectl|istioctl", ""),
    "kubectl-unknown-command": (["kubectl", "frob"], 1,
                                'error: unknown command "frob" for "kubectl"', ""),
    "kubectl-unknown-kind": (["kubectl", "get", "podz"], 1,
                             'error: the server doesn\'t have a resource type "podz"', ""),
    "kubectl-unknown-flag": (["kubectl", "get", "pods", "--frobnicate"], 1,
                             "error: unknown flag: --frobnicate", ""),
    "kubectl-flag-without-value": (["kubectl", "get", "pods", "-n"], 1,
                                   "flag needs an argument", ""),
    "kubectl-only-a-flag": (["kubectl", "-n"], 1,
                            "error: flag needs an argument: 'n' in -n", ""),
    "kubectl-apply-refused": (
        ["kubectl", "apply", "-f", str(CORPUS / "weights-sum-to-90.yaml")], 1,
        f"(VirtualService {NS}/reviews at spec.http[0].route)", ""),
    "kubectl-apply-nothing": (
        ["kubectl", "apply", "-f", str(CORPUS / "empty-only-comments.yaml")], 1,
        "error: no objects passed to apply", ""),
    "istioctl-unknown-command": (["istioctl", "frob"], 1,
                                 'Error: unknown command "frob" for "istioctl"', ""),
}


def _shim_params() -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(reason=bug, strict=True)]
                         if (bug := SHIM_CASES[name][3]) else [])
            for name in sorted(SHIM_CASES)]


@pytest.mark.skipif(not HAS_SHIMS, reason="the kubectl/istioctl shims are not built")
@pytest.mark.parametrize("case", _shim_params())
def test_wrong_shim_usage_answers_like_the_real_tool(routed, case):
    """Run against the module's mesh (LAB_MESH and LAB_STATE_DIR are still set for it)."""
    argv, code, says, _ = SHIM_CASES[case]
    result = run_module("lablib.shims", argv)
    assert "Traceback" not in result.stdout + result.stderr
    assert says in result.stderr, result.stderr or result.stdout
    assert result.returncode == code
    if argv[:2] == ["kubectl", "apply"]:
        assert_last_good_config(routed)


def test_an_envoy_rejection_gives_the_reason_first_and_no_config_dump(routed):
    """A 17 KB header value passes Istio's validation but breaks an Envoy proto constraint
    (values hold at most 16384 bytes): Envoy's NACK carries the whole route table as text."""
    reviews = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
               "metadata": {"name": "reviews", "namespace": NS},
               "spec": {"hosts": ["reviews"], "http": [{
                   "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                   "headers": {"response": {"add": {"x-lab-big": "a" * 17000}}}}]}}
    before = stored_config(routed)
    with pytest.raises(lablib.ProxyRejectedError) as refused:
        routed.apply(reviews)
    message = str(refused.value)
    assert message.startswith("Envoy refused the new configuration"), message[:300]
    assert "16384" in message and "Value" in message, message[:1000]
    assert len(message) < 1500 and "virtual_hosts {" not in message, message[:1500]
    assert "meshd.log" in message
    assert stored_config(routed) == before
    assert_last_good_config(routed)


def test_a_deployment_name_kubernetes_accepts_runs_with_a_pod_name_cut_as_the_api_server_does(
        routed):
    """250 characters is a valid Deployment name; its pod names (file names here) are cut to
    58 characters before the 5 random ones, as generateName does (it once failed with "File
    name too long")."""
    name = "s" * 250
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": name, "namespace": NS},
                  "spec": {"selector": {"matchLabels": {"app": "long"}}, "template": {
                      "metadata": {"labels": {"app": "long"}},
                      "spec": {"containers": [{"name": "sleep", "image": "curlimages/curl"}]}}}}
    routed.apply(deployment)
    try:
        [pod] = routed.get("pods", namespace=NS, selector={"app": "long"})
        assert len(pod["metadata"]["name"]) == 63
        assert pod["metadata"]["name"].startswith("s" * 58)
        routed.wait_ready(NS, timeout=60)
        assert_last_good_config(routed)
    finally:
        routed.delete(deployment)


@pytest.mark.parametrize("text", ["", "# only a comment\n", BOOKINFO])
def test_meshd_reads_the_text_it_is_sent_and_never_a_path(routed, text):
    """Empty text once made meshd load the YAML files of its working folder (Path("") is
    "."); a path sent as text is YAML text there, not a file to read."""
    before = stored_config(routed)
    with pytest.raises(lablib.ConfigError) as refused:
        routed.call("apply", text=text, namespace=NS)  # type: ignore[attr-defined]
    expected = "a manifest must be a mapping" if text == BOOKINFO else "no objects passed to apply"
    assert expected in str(refused.value)
    assert stored_config(routed) == before
