"""environment/: the scripts behind `make cluster`, `make istio` and `make cluster-down`,
run against stand-in docker, kind, kubectl and istioctl that log what they are asked."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = ROOT / "environment"
SCRIPTS = ("create-cluster.sh", "install-istio.sh", "delete-cluster.sh")
BASH = shutil.which("bash") or "/bin/bash"


def run(script: str, path: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(ENV / script)], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": path, "HOME": str(cwd), **env}, timeout=60, check=False)


def tool(bin_dir: Path, name: str, body: str) -> None:
    """A stand-in for `name` that appends its argv to calls.log, then runs `body` (sh)."""
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{bin_dir.parent}/calls.log"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """docker, kind, kubectl and istioctl stand-ins for a machine where all goes well."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    clusters = tmp_path / "clusters"
    clusters.touch()
    tool(bin_dir, "docker", "exit 0")
    tool(bin_dir, "kind", f"""case "$1 $2" in
  "get clusters") cat "{clusters}" ;;
  "create cluster") echo istio-lab >> "{clusters}" ;;
esac""")
    tool(bin_dir, "kubectl", """case "$1 $2" in
  "config current-context") echo "${CONTEXT:-kind-istio-lab}" ;;
esac""")
    tool(bin_dir, "istioctl", 'if [ "$1" = version ]; then echo 1.20.3; fi')
    return bin_dir


def calls(bin_dir: Path) -> list[str]:
    log = bin_dir.parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def path_with(bin_dir: Path) -> str:
    return f"{bin_dir}:/usr/bin:/bin"


@pytest.mark.parametrize("script", [*SCRIPTS, "lib.sh"])
def test_scripts_are_strict_bash(script: str) -> None:
    path = ENV / script
    text = path.read_text()
    if script != "lib.sh":
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
        assert os.access(path, os.X_OK), f"{script} is not executable"
    subprocess.run([BASH, "-n", str(path)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-x", str(path)], check=True, cwd=ROOT)


@pytest.mark.parametrize(("script", "needed"), [
    ("create-cluster.sh", ["docker", "kind", "kubectl"]),
    ("install-istio.sh", ["kubectl", "istioctl"]),
    ("delete-cluster.sh", ["docker", "kind"]),
])
def test_missing_tools_are_named_with_where_to_get_them(script: str, needed: list[str],
                                                        tmp_path: Path) -> None:
    done = run(script, str(tmp_path / "empty"), cwd=tmp_path)
    assert done.returncode == 1
    missing = [line for line in done.stderr.splitlines() if line.startswith("missing:")]
    assert [line.split()[1] for line in missing] == needed
    assert all("https://" in line for line in missing)
    assert "error: install what is missing above" in done.stderr
    if "istioctl" in needed:
        assert "ISTIO_VERSION=1.20.3" in done.stderr


def test_a_stopped_docker_daemon_is_said_plainly(tools: Path) -> None:
    tool(tools, "docker", "exit 1")
    done = run("create-cluster.sh", path_with(tools))
    assert done.returncode == 1 and "daemon does not answer" in done.stderr
    assert not any(c.startswith("kind create") for c in calls(tools))


def test_create_cluster_uses_the_kind_config_once(tools: Path) -> None:
    first = run("create-cluster.sh", path_with(tools))
    assert first.returncode == 0, first.stderr
    creates = [c for c in calls(tools) if c.startswith("kind create")]
    assert creates == [f"kind create cluster --name istio-lab --config {ENV}/kind-cluster.yaml "
                       "--wait 120s"]
    assert "kubectl config use-context kind-istio-lab" in calls(tools)
    assert "next: make istio" in first.stdout
    second = run("create-cluster.sh", path_with(tools))
    assert second.returncode == 0 and "already exists" in second.stdout
    assert len([c for c in calls(tools) if c.startswith("kind create")]) == 1


def test_install_istio_on_kind_uses_the_overlay_then_the_addons(tools: Path) -> None:
    done = run("install-istio.sh", path_with(tools))
    assert done.returncode == 0, done.stderr
    log = calls(tools)
    assert f"istioctl install -y -f {ENV}/istio-kind.yaml" in log
    applied = [c.split()[-1] for c in log if c.startswith("kubectl apply -f")]
    assert applied == [f"https://raw.githubusercontent.com/istio/istio/release-1.20/samples/"
                       f"addons/{name}.yaml" for name in ("prometheus", "grafana", "kiali")]
    assert "kubectl -n istio-system rollout status deployment/kiali --timeout=300s" in log
    assert "LAB_BACKEND=kubernetes make lab" in done.stdout


def test_install_istio_elsewhere_uses_the_plain_demo_profile(tools: Path) -> None:
    done = run("install-istio.sh", path_with(tools), CONTEXT="gke_lab")
    assert done.returncode == 0, done.stderr
    assert ("istioctl install -y --set profile=demo --set "
            "values.pilot.env.PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING=true") in calls(tools)


def test_install_istio_needs_a_reachable_cluster(tools: Path) -> None:
    tool(tools, "kubectl", """case "$1 $2" in
  "config current-context") echo kind-istio-lab ;;
  *) exit 1 ;;
esac""")
    done = run("install-istio.sh", path_with(tools))
    assert done.returncode == 1
    assert 'cannot reach the cluster of context "kind-istio-lab"' in done.stderr
    assert "make cluster" in done.stderr


def test_a_wrong_istioctl_version_is_warned_about(tools: Path) -> None:
    tool(tools, "istioctl", 'if [ "$1" = version ]; then echo 1.22.0; fi')
    done = run("install-istio.sh", path_with(tools))
    assert done.returncode == 0 and 'istioctl says "1.22.0", not 1.20.x' in done.stderr


def test_delete_cluster_deletes_only_what_exists(tools: Path) -> None:
    done = run("delete-cluster.sh", path_with(tools))
    assert done.returncode == 0 and "nothing to delete" in done.stdout
    (tools.parent / "clusters").write_text("istio-lab\n")
    done = run("delete-cluster.sh", path_with(tools))
    assert done.returncode == 0
    assert "kind delete cluster --name istio-lab" in calls(tools)


def test_the_kind_ports_are_the_gateways_node_ports() -> None:
    kind = yaml.safe_load((ENV / "kind-cluster.yaml").read_text())
    nodes = kind["nodes"]
    assert [n["role"] for n in nodes] == ["control-plane"]
    published = {m["containerPort"]: m["hostPort"] for m in nodes[0]["extraPortMappings"]}
    operator = yaml.safe_load((ENV / "istio-kind.yaml").read_text())
    assert operator["spec"]["profile"] == "demo"
    gateway = operator["spec"]["components"]["ingressGateways"][0]
    ports = {p["name"]: p for p in gateway["k8s"]["service"]["ports"]}
    assert set(ports) == {"status-port", "http2", "https", "tcp", "tls"}
    node_ports = {name: p["nodePort"] for name, p in ports.items() if "nodePort" in p}
    assert published == {node_ports["http2"]: 80, node_ports["https"]: 443,
                         node_ports["tcp"]: 31400}
    assert all(30000 <= n <= 32767 for n in node_ports.values())
    env = operator["spec"]["values"]["pilot"]["env"]
    assert env["PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING"] == "true"


def test_the_readme_explains_each_script() -> None:
    readme = (ENV / "README.md").read_text()
    for name in (*SCRIPTS, "kind-cluster.yaml", "istio-kind.yaml", "make cluster",
                 "make istio", "make cluster-down", "LAB_NAMESPACE_PREFIX"):
        assert name in readme, f"environment/README.md does not mention {name}"
