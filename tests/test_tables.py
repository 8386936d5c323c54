"""lablib.tables against the text real `kubectl get` printed for the same objects.

The expected blocks are kubectl 1.28 output from the walkthrough the labs follow
(/work/shared/walkthrough/istio-practice-notes.md); the manifests are rebuilt by hand to
match them.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lablib import tables

NOW = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC)


def stamp(seconds: int) -> str:
    """A creationTimestamp `seconds` before NOW, as the API server writes it."""
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def service(name: str, cluster_ip: str, ports: list[tuple[str, int, int | None]],
            selector: dict[str, str], created: int, kind: str = "ClusterIP",
            lb_ip: str | None = None) -> dict[str, Any]:
    """A Service manifest; ports are (name, port, nodePort)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "istio-system",
                     "creationTimestamp": stamp(created)},
        "spec": {"type": kind, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "selector": selector,
                 "ports": [{"name": n, "port": p, "protocol": "TCP",
                            **({"nodePort": np} if np else {})} for n, p, np in ports]},
        "status": {"loadBalancer": {"ingress": [{"ip": lb_ip}]} if lb_ip else {}},
    }


def pod(name: str, ip: str, created: int, containers: int = 1, node: str = "ctrlnode",
        namespace: str = "istio-system", **status: Any) -> dict[str, Any]:
    """A running pod with `containers` ready containers, unless `status` says otherwise."""
    names = ["app", "istio-proxy"][:containers] if containers <= 2 else [
        f"c{i}" for i in range(containers)]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": stamp(created)},
        "spec": {"nodeName": node, "containers": [{"name": n, "image": "img"} for n in names]},
        "status": {"phase": "Running", "podIP": ip,
                   "containerStatuses": [{"name": n, "ready": True, "restartCount": 0,
                                          "state": {"running": {}}} for n in names],
                   **status},
    }


def deployment(name: str, container: str, image: str, selector: dict[str, str],
               created: int) -> dict[str, Any]:
    """A Deployment with one ready replica."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "istio-system",
                     "creationTimestamp": stamp(created)},
        "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                 "template": {"spec": {"containers": [{"name": container, "image": image}]}}},
        "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                   "availableReplicas": 1},
    }


def istio_system() -> list[dict[str, Any]]:
    """What `kubectl get svc,pod,deploy -n istio-system` listed after the demo install."""
    istiod, egress, ingress = ({"app": "istiod", "istio": "pilot"},
                               {"app": "istio-egressgateway", "istio": "egressgateway"},
                               {"app": "istio-ingressgateway", "istio": "ingressgateway"})
    # The walkthrough's node name was shortened to `ctrlnode` after kubectl had padded the
    # column for a 12-character name; a 12-character name keeps kubectl's layout.
    node = "ctrlnode-001"
    return [
        service("istiod", "10.43.68.92", [("grpc-xds", 15010, None), ("https-dns", 15012, None),
                                          ("https-webhook", 443, None),
                                          ("http-monitoring", 15014, None)], istiod, 575),
        service("istio-egressgateway", "10.43.78.245", [("http2", 80, None),
                                                        ("https", 443, None)], egress, 573),
        service("istio-ingressgateway", "10.43.114.120",
                [("status-port", 15021, 32695), ("http2", 80, 31783), ("https", 443, 30165),
                 ("tcp", 31400, 32067), ("tls", 15443, 31202)], ingress, 573,
                kind="LoadBalancer", lb_ip="172.19.106.241"),
        pod("istiod-75d8d56b68-tr97k", "10.42.0.10", 575, node=node),
        pod("istio-ingressgateway-86446666f9-qn4f2", "10.42.0.12", 573, node=node),
        pod("istio-egressgateway-c878fd6c5-4m6ds", "10.42.0.11", 573, node=node),
        deployment("istiod", "discovery", "docker.io/istio/pilot:1.20.3",
                   {"istio": "pilot"}, 575),
        deployment("istio-ingressgateway", "istio-proxy", "docker.io/istio/proxyv2:1.20.3",
                   ingress, 573),
        deployment("istio-egressgateway", "istio-proxy", "docker.io/istio/proxyv2:1.20.3",
                   egress, 573),
    ]


KUBECTL_ISTIO_SYSTEM_WIDE = """\
NAME                           TYPE           CLUSTER-IP      EXTERNAL-IP      PORT(S)                                                                      AGE     SELECTOR
service/istiod                 ClusterIP      10.43.68.92     <none>           15010/TCP,15012/TCP,443/TCP,15014/TCP                                        9m35s   app=istiod,istio=pilot
service/istio-egressgateway    ClusterIP      10.43.78.245    <none>           80/TCP,443/TCP                                                               9m33s   app=istio-egressgateway,istio=egressgateway
service/istio-ingressgateway   LoadBalancer   10.43.114.120   172.19.106.241   15021:32695/TCP,80:31783/TCP,443:30165/TCP,31400:32067/TCP,15443:31202/TCP   9m33s   app=istio-ingressgateway,istio=ingressgateway

NAME                                        READY   STATUS    RESTARTS   AGE     IP           NODE           NOMINATED NODE   READINESS GATES
pod/istiod-75d8d56b68-tr97k                 1/1     Running   0          9m35s   10.42.0.10   ctrlnode-001   <none>           <none>
pod/istio-ingressgateway-86446666f9-qn4f2   1/1     Running   0          9m33s   10.42.0.12   ctrlnode-001   <none>           <none>
pod/istio-egressgateway-c878fd6c5-4m6ds     1/1     Running   0          9m33s   10.42.0.11   ctrlnode-001   <none>           <none>

NAME                                   READY   UP-TO-DATE   AVAILABLE   AGE     CONTAINERS    IMAGES                           SELECTOR
deployment.apps/istiod                 1/1     1            1           9m35s   discovery     docker.io/istio/pilot:1.20.3     istio=pilot
deployment.apps/istio-ingressgateway   1/1     1            1           9m33s   istio-proxy   docker.io/istio/proxyv2:1.20.3   app=istio-ingressgateway,istio=ingressgateway
deployment.apps/istio-egressgateway    1/1     1            1           9m33s   istio-proxy   docker.io/istio/proxyv2:1.20.3   app=istio-egressgateway,istio=egressgateway"""  # noqa: E501

KUBECTL_GATEWAY_VS = """\
NAME                                           AGE
gateway.networking.istio.io/bookinfo-gateway   23s

NAME                                          GATEWAYS               HOSTS   AGE
virtualservice.networking.istio.io/bookinfo   ["bookinfo-gateway"]   ["*"]   22s"""


def test_svc_pod_deploy_wide_matches_kubectl() -> None:
    """`kubectl get svc,pod,deploy -n istio-system -owide`, character for character."""
    assert tables.text(istio_system(), wide=True, now=NOW) == KUBECTL_ISTIO_SYSTEM_WIDE


def test_gateway_and_virtualservice_match_kubectl() -> None:
    """Istio's CRDs: Gateway has only AGE; VirtualService prints its lists as JSON."""
    api = "networking.istio.io/v1alpha3"
    items = [
        {"apiVersion": api, "kind": "Gateway",
         "metadata": {"name": "bookinfo-gateway", "creationTimestamp": stamp(23)},
         "spec": {"selector": {"istio": "ingressgateway"}}},
        {"apiVersion": api, "kind": "VirtualService",
         "metadata": {"name": "bookinfo", "creationTimestamp": stamp(22)},
         "spec": {"hosts": ["*"], "gateways": ["bookinfo-gateway"]}},
    ]
    assert tables.text(items, wide=True, now=NOW) == KUBECTL_GATEWAY_VS


def test_single_kind_has_no_prefix_and_no_wide_columns() -> None:
    """`kubectl get svc`: plain names, no SELECTOR unless -o wide."""
    services = [i for i in istio_system() if i["kind"] == "Service"]
    frame = tables.table(services, now=NOW)
    assert list(frame.columns) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert frame["NAME"].tolist() == ["istiod", "istio-egressgateway", "istio-ingressgateway"]
    assert frame["PORT(S)"].tolist()[1] == "80/TCP,443/TCP"


def test_table_refuses_mixed_kinds_and_tables_prefixes_them() -> None:
    """One DataFrame per kind; the prefix is `kind.group` as kubectl prints it."""
    items = istio_system()
    with pytest.raises(ValueError, match="several kinds"):
        tables.table(items)
    frames = tables.tables(items, now=NOW)
    assert list(frames) == ["service", "pod", "deployment.apps"]
    assert frames["deployment.apps"]["NAME"].iloc[0] == "deployment.apps/istiod"
    assert "SELECTOR" not in frames["service"].columns


def test_pending_load_balancer_and_node_ports() -> None:
    """A LoadBalancer without an address is `<pending>`; ports carry their NodePorts."""
    svc = service("istio-ingressgateway", "", [("status-port", 15021, 31234),
                                               ("http2", 80, 30080)], {"istio": "x"}, 45,
                  kind="LoadBalancer")
    del svc["spec"]["clusterIPs"]
    row = tables.table([svc], now=NOW).iloc[0]
    assert row["EXTERNAL-IP"] == "<pending>"
    assert row["CLUSTER-IP"] == "<none>"
    assert row["PORT(S)"] == "15021:31234/TCP,80:30080/TCP"
    assert row["AGE"] == "45s"


def test_service_types_other_than_cluster_ip() -> None:
    """ExternalName shows its name; externalIPs show on any type; no ports is `<none>`."""
    external = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"}}
    pinned = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
              "spec": {"type": "NodePort", "externalIPs": ["1.2.3.4"],
                       "ports": [{"port": 53, "nodePort": 30053, "protocol": "UDP"}]}}
    frame = tables.table([external, pinned], now=NOW)
    assert frame["EXTERNAL-IP"].tolist() == ["db.example.com", "1.2.3.4"]
    assert frame["PORT(S)"].tolist() == ["<none>", "53:30053/UDP"]
    assert frame["AGE"].tolist() == ["<unknown>", "<unknown>"]


def test_pod_ready_counts_and_status_reasons() -> None:
    """READY is ready/total containers; a waiting reason or deletion replaces the phase."""
    sidecar = pod("reviews-v1-abc", "10.0.0.1", 60, containers=2, namespace="bookinfo-test")
    crashing = pod("ratings-v1-def", "10.0.0.2", 60, containers=2, namespace="bookinfo-test")
    crashing["status"]["containerStatuses"][0].update(
        ready=False, restartCount=4, state={"waiting": {"reason": "CrashLoopBackOff"}})
    crashing["status"]["containerStatuses"][1]["restartCount"] = 1
    leaving = pod("details-v1-ghi", "10.0.0.3", 60, namespace="bookinfo-test")
    leaving["metadata"]["deletionTimestamp"] = stamp(1)
    frame = tables.table([sidecar, crashing, leaving], now=NOW)
    assert frame[["READY", "STATUS", "RESTARTS"]].values.tolist() == [
        ["2/2", "Running", "0"], ["1/2", "CrashLoopBackOff", "5"], ["1/1", "Terminating", "0"]]


def test_pod_that_exited_shows_its_exit_code() -> None:
    """A terminated container without a reason shows `ExitCode:N`, as kubectl does."""
    done = pod("job-1", "10.0.0.9", 60, phase="Failed")
    done["status"]["containerStatuses"][0].update(
        ready=False, state={"terminated": {"exitCode": 3}})
    row = tables.table([done], wide=True, now=NOW).iloc[0]
    assert (row["READY"], row["STATUS"], row["NOMINATED NODE"]) == ("0/1", "ExitCode:3", "<none>")


def test_deployment_ready_is_ready_over_desired() -> None:
    """READY counts ready replicas against spec.replicas, not against pods that exist."""
    rolling = deployment("reviews-v2", "reviews", "img", {"app": "reviews"}, 300)
    rolling["spec"]["replicas"] = 3
    rolling["spec"]["selector"]["matchExpressions"] = [
        {"key": "version", "operator": "In", "values": ["v2", "v1"]}]
    row = tables.table([rolling], wide=True, now=NOW).iloc[0]
    assert (row["READY"], row["AVAILABLE"], row["AGE"]) == ("1/3", "1", "5m")
    assert row["SELECTOR"] == "app=reviews,version in (v1,v2)"


def test_destination_rules_namespaces_and_unknown_kinds() -> None:
    """HOST for DestinationRules, STATUS for namespaces, NAME AGE for anything else."""
    dr = {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
          "metadata": {"name": "reviews", "creationTimestamp": stamp(3 * 86400)},
          "spec": {"host": "reviews"}}
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "bookinfo-test", "creationTimestamp": stamp(7200)},
          "status": {"phase": "Active"}}
    sa = {"apiVersion": "v1", "kind": "ServiceAccount",
          "metadata": {"name": "bookinfo-reviews", "creationTimestamp": stamp(90)}}
    assert tables.table([dr], now=NOW).values.tolist() == [["reviews", "reviews", "3d"]]
    assert tables.table([ns], now=NOW).values.tolist() == [["bookinfo-test", "Active", "120m"]]
    assert tables.table([sa], wide=True, now=NOW).columns.tolist() == ["NAME", "AGE"]


def test_virtual_service_without_gateways_leaves_the_column_blank() -> None:
    """A mesh-only VirtualService has no `spec.gateways`: kubectl prints an empty cell."""
    vs = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "creationTimestamp": stamp(5)},
          "spec": {"hosts": ["reviews", "reviews.bookinfo-test.svc.cluster.local"]}}
    assert tables.text([vs], now=NOW) == (
        "NAME      GATEWAYS   HOSTS                                                   AGE\n"
        'reviews              ["reviews","reviews.bookinfo-test.svc.cluster.local"]   5s')


def test_items_from_several_namespaces_get_a_namespace_column() -> None:
    """As `kubectl get pods -A`: NAMESPACE first when the list spans namespaces."""
    items = [pod("istiod-1", "10.0.0.1", 10), pod("sleep-1", "10.0.0.2", 10, namespace="foo")]
    frame = tables.table(items, now=NOW)
    assert frame.columns.tolist()[:2] == ["NAMESPACE", "NAME"]
    assert frame["NAMESPACE"].tolist() == ["istio-system", "foo"]


def test_empty_list() -> None:
    """Nothing to show: kubectl's message, and an empty NAME AGE frame."""
    assert tables.text([]) == "No resources found."
    assert tables.table([]).columns.tolist() == ["NAME", "AGE"]


@pytest.mark.parametrize(("seconds", "shown"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"),
    (192, "3m12s"), (575, "9m35s"), (600, "10m"), (4500, "75m"), (3 * 3600, "3h"),
    (5 * 3600 + 180, "5h3m"), (17 * 3600 + 59 * 60, "17h"), (43 * 3600, "43h"),
    (48 * 3600, "2d"), (50 * 3600, "2d2h"), (8 * 86400, "8d"), (400 * 86400, "400d"),
    (2 * 365 * 86400, "2y"), (3 * 365 * 86400 + 10 * 86400, "3y10d"),
    (9 * 365 * 86400, "9y"),
])
def test_human_duration_follows_kubectl(seconds: int, shown: str) -> None:
    """The AGE thresholds of k8s.io/apimachinery's HumanDuration."""
    assert tables.human_duration(seconds) == shown


def test_age_reads_creation_timestamp() -> None:
    """AGE counts from metadata.creationTimestamp; fractional seconds are accepted."""
    item = {"metadata": {"creationTimestamp": "2024-03-05T11:56:48.5Z"}}
    assert tables.age(item, now=NOW) == "3m11s"
    assert tables.age({"metadata": {}}, now=NOW) == "<unknown>"
