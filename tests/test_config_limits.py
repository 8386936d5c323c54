"""The API server's limits (names, namespaces, data keys, sizes, replicas, int32/uint32,
durations, header names and values) and the loader's defences (alias bombs, empty input,
no path resolved from text): each refused fast, naming the resource and the field."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lablib.config.analyze import analyze
from lablib.config.loader import load
from lablib.config.store import ConfigStore
from lablib.errors import ConfigError, Diagnostic


def refused(text: str, namespace: str | None = None, verb: str = "") -> list[Diagnostic]:
    with pytest.raises(ConfigError) as error:
        load(text, namespace=namespace, verb=verb)
    return [d for d in error.value.diagnostics if d.severity == "Error"]


def the_one(text: str, field: str) -> Diagnostic:
    found = [d for d in refused(text) if d.field == field]
    assert len(found) == 1, refused(text)
    return found[0]


def deployment(name: str = "web", replicas: int = 1, pod: str = "") -> str:
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\n"
            f"spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n"
            "  template:\n    metadata: {labels: {app: web}}\n"
            + (pod or "    spec: {containers: [{name: web, image: nginx}]}\n"))


@pytest.mark.parametrize(("kind", "name", "says"), [
    ("Namespace", "a.b", "DNS-1123 label"),
    ("Namespace", "n" * 64, "no more than 63 characters (it has 64)"),
    ("Service", "x.istio-system", "DNS-1035 label"),
    ("Service", "1web", "start with an alphabetic character"),
    ("Gateway", "my.gateway", "DNS-1123 label"),
    ("ConfigMap", "Upper", "RFC 1123 subdomain"),
])
def test_names_follow_the_rule_of_their_kind(kind: str, name: str, says: str) -> None:
    version = "networking.istio.io/v1" if kind == "Gateway" else "v1"
    diagnostic = the_one(f"apiVersion: {version}\nkind: {kind}\nmetadata: {{name: '{name}'}}\n",
                         "metadata.name")
    assert says in diagnostic.message
    assert f"{kind} " in diagnostic.resource
    assert "at most" in diagnostic.fix


def test_a_long_deployment_name_is_refused_with_the_limit() -> None:
    diagnostic = the_one(deployment("a" * 260), "metadata.name")
    assert "no more than 253 characters (it has 260)" in diagnostic.message


def test_a_deployment_name_kubernetes_accepts_is_accepted() -> None:
    [resource] = load(deployment("a" * 250))
    assert resource.name == "a" * 250


@pytest.mark.parametrize("namespace", ["with.dots", "n" * 100, "Upper"])
def test_namespaces_are_dns_labels(namespace: str) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n"
    [diagnostic] = refused(text, namespace=namespace)
    assert diagnostic.field == "metadata.namespace"
    assert diagnostic.resource == f"ConfigMap {namespace}/c"


@pytest.mark.parametrize("key", ["../../x", "a/b", "..hidden", "sp ace", "k" * 254])
def test_data_keys_are_plain_file_names(key: str) -> None:
    text = f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {{'{key}': x}}\n"
    [diagnostic] = refused(text)
    assert diagnostic.field.startswith("stringData[")
    assert "valid config key" in diagnostic.message


def test_secret_and_configmap_data_is_capped_at_one_mebibyte() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"},
              "data": {"blob": base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()}}
    with pytest.raises(ConfigError) as error:
        load(secret)
    [diagnostic] = error.value.diagnostics
    assert (diagnostic.field, diagnostic.resource) == ("data", "Secret default/big")
    assert "at most 1048576 bytes" in diagnostic.message


def test_any_object_is_capped_at_etcds_limit() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
              "data": {f"k{i}": "x" * 1000 for i in range(1600)}}
    with pytest.raises(ConfigError) as error:
        load(config)
    messages = " ".join(d.message for d in error.value.diagnostics)
    assert "at most 1048576 bytes" in messages and "at most 1572864 bytes" in messages


def test_replicas_cannot_be_negative() -> None:
    diagnostic = the_one(deployment(replicas=-5), "spec.replicas")
    assert "greater than or equal to 0" in diagnostic.message


def test_volume_names_are_dns_labels_and_mounts_name_a_volume() -> None:
    pod = ("    spec:\n      volumes: [{name: /tmp/evil, configMap: {name: c}}]\n"
           "      containers:\n      - name: web\n        image: nginx\n"
           "        volumeMounts: [{name: other, mountPath: /etc/x}]\n")
    found = {d.field: d.message for d in refused(deployment(pod=pod))}
    assert "DNS-1123 label" in found["spec.template.spec.volumes[0].name"]
    assert "Not found" in found["spec.template.spec.containers[0].volumeMounts[0].name"]


@pytest.mark.parametrize(("route", "field", "says"), [
    ("timeout: 99999999999999h", "spec.http[0].timeout", "at most 2562047h"),
    ("retries: {attempts: 1099511627776}", "spec.http[0].retries.attempts",
     "out of range for a 32-bit integer"),
    ('headers: {request: {set: {"x\\r\\ny": v}}}', 'spec.http[0].headers.request.set["x\\r\\ny"]',
     "invalid HTTP header name"),
    ('headers: {request: {set: {x-a: "v\\r\\nInjected: 1"}}}',
     "spec.http[0].headers.request.set.x-a", "CR/LF"),
    ('headers: {response: {remove: ["bad name"]}}', "spec.http[0].headers.response.remove[0]",
     "invalid HTTP header name"),
    ('match: [{headers: {"end user": {exact: jason}}}]',
     'spec.http[0].match[0].headers["end user"]', "invalid HTTP header name"),
])
def test_out_of_range_values_and_bad_headers_name_their_field(route: str, field: str,
                                                              says: str) -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
            f"spec:\n  hosts: [r]\n  http:\n  - {route}\n"
            "    route: [{destination: {host: r}}]\n")
    diagnostic = the_one(text, field)
    assert says in diagnostic.message
    assert diagnostic.code == "IST0106" and diagnostic.resource == "VirtualService default/r"


def test_uint32_fields_are_capped() -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
            "spec:\n  host: r\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: "
            "4294967296}}\n")
    diagnostic = the_one(text, "spec.trafficPolicy.outlierDetection.consecutive5xxErrors")
    assert "unsigned 32-bit" in diagnostic.message


BILLION_LAUGHS = "\n".join([
    "apiVersion: v1", "kind: ConfigMap", "metadata: {name: lol}", "data:",
    '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"  {name}: &{name} [{','.join([f'*{prev}'] * 9)}]"
      for prev, name in zip("abcdefgh", "bcdefghi", strict=True)),
]) + "\n"


def test_a_billion_laughs_is_refused_at_once() -> None:
    assert len(BILLION_LAUGHS) < 700
    [diagnostic] = refused(BILLION_LAUGHS)
    assert "too many alias expansions" in diagnostic.message
    assert "line 1" in diagnostic.message
    # Counted per node, never expanded (bench/big_objects.py times the refusal):
    assert "38 nodes expand to 490329074" in diagnostic.message


def test_a_self_containing_alias_is_refused() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: &d {x: *d}\n"
    [diagnostic] = refused(text)
    assert "contains it" in diagnostic.message


def test_a_few_aliases_still_load() -> None:
    text = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: &l {app: web}\n"
            "  annotations: *l\ndata: {a: b}\n")
    [resource] = load(text)
    assert resource.body["metadata"]["annotations"] == {"app": "web"}


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "# one line",
                                  "apiVersion: v1\nkind: List\nitems: []\n"])
@pytest.mark.parametrize("verb", ["apply", "delete"])
def test_empty_input_is_no_objects_passed(text: str, verb: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """And never the YAML files of the current folder (Path("") is ".")."""
    (tmp_path / "stray.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: stray}\n")
    monkeypatch.chdir(tmp_path)
    [diagnostic] = refused(text, verb=verb)
    assert diagnostic.message == f"no objects passed to {verb}"


def test_text_only_loading_never_reads_a_path(tmp_path: Path) -> None:
    manifest = tmp_path / "ns.yaml"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: from-file}\n")
    assert load(str(manifest))[0].name == "from-file"
    with pytest.raises(ConfigError):
        load(str(manifest), read_files=False)


@pytest.mark.parametrize(("delay", "says"), [
    ("0s", "must be at least 1ms"), ("0.5ms", "must be at least 1ms"),
    ("1.5ms", "only durations to ms precision"), ("1ms", ""), ("1.5s", ""),
])
def test_durations_follow_istios_rule_of_at_least_1ms_in_whole_milliseconds(delay: str,
                                                                            says: str) -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            "metadata: {name: r, namespace: default}\nspec:\n  hosts: [r]\n  http:\n"
            f"  - fault: {{delay: {{fixedDelay: {delay}, percentage: {{value: 10}}}}}}\n"
            "    route: [{destination: {host: r}}]\n")
    found = [d for d in analyze(ConfigStore().with_applied(load(text))) if d.code == "LAB0210"]
    assert [d.field for d in found] == (["spec.http[0].fault.delay.fixedDelay"] if says else [])
    assert all(says in d.message for d in found)
