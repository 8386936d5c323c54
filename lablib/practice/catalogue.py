"""The fault catalogue: known Istio pitfalls, each set up on Bookinfo or httpbin, stated as a
user would report it, and judged by what the mesh does with real requests.

A scenario is one `Scenario` entry: the change that breaks the mesh (`setup`), the promises
that must hold once it is fixed (`goal`), the promises that hold before and must still hold
after (`guards`: a fix that breaks one is a workaround), graded hints, the reference fix and
a plausible wrong fix (both used by the tests). Adding a pitfall is adding one entry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..apps.bookinfo import classify
from ..apps.bookinfo._texts import RATING_ERROR
from ..backend import Backend
from ..config.loader import load
from ..labs import BOOKINFO, BOOKINFO_GATEWAY, ensure_bookinfo
from ..traffic import binomial_bound
from .probes import from_ingress, from_pod, from_pod_concurrently

__all__ = ["CATALOGUE", "Change", "Check", "Scenario", "ensure_base", "reset", "scenario",
           "teardown"]

BOOKINFO_NS = "bookinfo-test"
APP_NS = "practice"               # injected: httpbin and sleep
LEGACY_NS = "practice-legacy"     # not injected: a sleep that predates the mesh
OUTSIDE_NS = "practice-outside"   # not injected: a client that must stay outside the mesh
LATE_NS = "practice-late"         # created by one scenario, removed by reset
HTTPBIN = "samples/httpbin/httpbin.yaml"
SLEEP = "samples/sleep/sleep.yaml"
DESTINATION_RULES = "samples/bookinfo/networking/destination-rule-all.yaml"
PAGES = 6  # product pages per check: a weighted or broken route shows within six
CANARY_PAGES = 60


@dataclass(frozen=True)
class Check:
    """A promise about the mesh's behaviour and the probe that tests it; the probe returns
    whether it holds and what it saw."""

    promise: str
    probe: Callable[[Backend], tuple[bool, str]]


@dataclass(frozen=True)
class Change:
    """What a setup or a fix does: manifests to apply, resources to delete (`kind/name.ns`),
    namespaces to label, Deployments to restart (`name.ns`, as `kubectl rollout restart`)."""

    apply: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    label: tuple[tuple[str, dict[str, str]], ...] = ()
    restart: tuple[str, ...] = ()
    then: Change | None = None  # what follows once this is in place (e.g. a label)

    def run(self, mesh: Backend) -> None:
        for ref in self.delete:
            kind, _, rest = ref.partition("/")
            name, _, namespace = rest.partition(".")
            mesh.delete({"apiVersion": _API[kind], "kind": kind,
                         "metadata": {"name": name, "namespace": namespace}}, namespace)
        for namespace, labels in self.label:
            mesh.create_namespace(namespace, labels)
        for text in self.apply:
            mesh.apply([d for d in yaml.safe_load_all(text) if d])
        for ref in self.restart:
            name, _, namespace = ref.partition(".")
            restart(mesh, name, namespace)
        if self.then:
            self.then.run(mesh)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    symptom: str
    topic: str
    setup: Change
    goal: tuple[Check, ...]
    hints: tuple[str, ...]
    solution: str
    fix: Change
    wrong_fix: Change
    guards: tuple[Check, ...] = ()
    tools: str = ""  # what the diagnostic tools show (codes, response flags)
    namespaces: tuple[str, ...] = field(default=(BOOKINFO_NS,))


_API = {"VirtualService": "networking.istio.io/v1beta1",
        "DestinationRule": "networking.istio.io/v1beta1",
        "Gateway": "networking.istio.io/v1beta1",
        "PeerAuthentication": "security.istio.io/v1beta1"}


def restart(mesh: Backend, name: str, namespace: str) -> None:
    """`kubectl rollout restart deploy/NAME`: a new pod template annotation, so new pods."""
    current = mesh.get("deployment", name, namespace)[0]
    meta = current["metadata"]
    # What a client sends back: no status, no server-set metadata (resourceVersion, uid).
    deployment = {"apiVersion": current["apiVersion"], "kind": "Deployment",
                  "metadata": {k: copy.deepcopy(meta[k]) for k in
                               ("name", "namespace", "labels", "annotations") if k in meta},
                  "spec": copy.deepcopy(current["spec"])}
    template = deployment["spec"].setdefault("template", {})
    annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
    generation = int(annotations.get("lab.istio.io/restarts", "0")) + 1
    annotations["lab.istio.io/restarts"] = str(generation)
    mesh.apply(deployment, namespace)
    mesh.wait_ready(namespace)


# --- the mesh every scenario starts from ----------------------------------------------------


def _namespace(mesh: Backend, name: str) -> dict[str, Any] | None:
    return next((ns for ns in mesh.get("namespace") if ns["metadata"]["name"] == name), None)


def ensure_base(mesh: Backend) -> None:
    """Bookinfo behind the gateway; httpbin and sleep in an injected namespace; a sleep in each
    of two namespaces without injection."""
    ensure_bookinfo(mesh, BOOKINFO_NS)
    for namespace, labels in ((APP_NS, {"istio-injection": "enabled"}), (LEGACY_NS, {}),
                              (OUTSIDE_NS, {})):
        if _namespace(mesh, namespace) is None:
            mesh.create_namespace(namespace, labels)
    mesh.apply(HTTPBIN, APP_NS)
    for namespace in (APP_NS, LEGACY_NS, OUTSIDE_NS):
        mesh.apply(SLEEP, namespace)
        mesh.wait_ready(namespace)


def reset(mesh: Backend) -> None:
    """Undo whatever a scenario (or a learner) changed: back to `ensure_base`."""
    for namespace in (BOOKINFO_NS, APP_NS, LEGACY_NS, OUTSIDE_NS):
        doomed = [r for kind in ("virtualservice", "destinationrule", "peerauthentication",
                                 "gateway")
                  for r in mesh.get(kind, namespace=namespace)
                  if (namespace, r["kind"], r["metadata"]["name"]) not in _BASE_CONFIG]
        if doomed:
            mesh.delete([{"apiVersion": r["apiVersion"], "kind": r["kind"],
                          "metadata": {"name": r["metadata"]["name"], "namespace": namespace}}
                         for r in doomed], namespace)
    if _namespace(mesh, LATE_NS) is not None:
        mesh.delete_namespace(LATE_NS)
    # Namespaces go back to their labels, then the base manifests are applied again: a
    # changed Service port or Gateway is restored, an unchanged one is left as it is.
    for namespace in (LEGACY_NS, OUTSIDE_NS):
        current = _namespace(mesh, namespace)
        if current and (current["metadata"].get("labels") or {}).get("istio-injection"):
            mesh.create_namespace(namespace, {})
    mesh.apply(BOOKINFO, BOOKINFO_NS)
    mesh.apply(BOOKINFO_GATEWAY, BOOKINFO_NS)
    ensure_base(mesh)
    for namespace in (LEGACY_NS, OUTSIDE_NS):
        for pod in mesh.get("pods", namespace=namespace):
            if any(c["name"] == "istio-proxy" for c in pod["spec"].get("containers") or []):
                restart(mesh, "sleep", namespace)  # injected by a fix: back outside the mesh
                break


def teardown(mesh: Backend) -> None:
    """Undo the scenario, then remove the practice namespaces: Bookinfo and its gateway stay,
    as every lab leaves them."""
    reset(mesh)
    for namespace in (APP_NS, LEGACY_NS, OUTSIDE_NS):
        mesh.delete_namespace(namespace)


_BASE_CONFIG = {(BOOKINFO_NS, "Gateway", "bookinfo-gateway"),
                (BOOKINFO_NS, "VirtualService", "bookinfo")}


# --- probes -----------------------------------------------------------------------------------


def _page_versions(mesh: Backend, user: str | None = None, n: int = PAGES) -> list[str]:
    """Which reviews version each of `n` product pages showed (`unavailable`, `error`,
    or the HTTP status when the page itself failed)."""
    versions = []
    for _ in range(n):
        reply = from_ingress(mesh, "/productpage", user=user)
        versions.append(classify(reply.body) if reply.status == 200 else f"HTTP {reply.status}")
    return versions


def reviews_shown(mesh: Backend) -> tuple[bool, str]:
    versions = _page_versions(mesh)
    return all(v in ("v1", "v2", "v3") for v in versions), f"reviews on {PAGES} pages: {versions}"


def reviews_all(version: str, user: str | None = None) -> Callable[[Backend], tuple[bool, str]]:
    def probe(mesh: Backend) -> tuple[bool, str]:
        versions = _page_versions(mesh, user)
        who = f"as {user}" if user else "signed out"
        return all(v == version for v in versions), f"reviews {who}: {versions}"
    return probe


def ratings_shown(mesh: Backend) -> tuple[bool, str]:
    """Pages served by reviews v2 show stars; a ratings failure shows RATING_ERROR."""
    failed, seen = 0, []
    for _ in range(12):  # a 50% fault leaves all twelve clean once in 4096 runs
        reply = from_ingress(mesh, "/productpage")
        broken = reply.status != 200 or RATING_ERROR in reply.body
        failed += broken
        seen.append("ratings error" if broken else "stars")
    return failed == 0, f"{failed} of 12 pages without ratings"


def canary_share(mesh: Backend) -> tuple[bool, str]:
    """v3 near 10% and only v1 otherwise, within four standard deviations of a binomial."""
    versions = _page_versions(mesh, n=CANARY_PAGES)
    share = versions.count("v3") / CANARY_PAGES
    others = set(versions) - {"v1", "v3"}
    ok = not others and abs(share - 0.1) <= binomial_bound(0.1, CANARY_PAGES)
    return ok, f"v3 on {share:.0%} of {CANARY_PAGES} pages; other answers: {sorted(others)}"


def plaintext_refused(source_ns: str, url: str) -> Callable[[Backend], tuple[bool, str]]:
    def probe(mesh: Backend) -> tuple[bool, str]:
        reply = from_pod(mesh, "sleep", source_ns, url, timeout=5)
        return reply.status != 200, (f"plaintext from {source_ns} to {url}: "
                                     f"{reply.status or 'no response'}")
    return probe


def pod_gets(source_ns: str, url: str, status: int = 200, within: float | None = None,
             contains: str = "") -> Callable[[Backend], tuple[bool, str]]:
    def probe(mesh: Backend) -> tuple[bool, str]:
        reply = from_pod(mesh, "sleep", source_ns, url, timeout=10)
        ok = reply.status == status and (within is None or reply.seconds < within) and (
            contains.lower() in reply.body.lower())
        extra = f" (body has {contains}: {contains.lower() in reply.body.lower()})" \
            if contains else ""
        return ok, f"GET {url} from {source_ns}: {reply.status} in {reply.seconds:.1f}s{extra}"
    return probe


def ingress_gets(path: str, host: str, status: int) -> Callable[[Backend], tuple[bool, str]]:
    def probe(mesh: Backend) -> tuple[bool, str]:
        reply = from_ingress(mesh, path, host=host)
        return reply.status == status, f"GET {path} Host: {host} at the gateway: {reply.status}"
    return probe


def survives_one_error(mesh: Backend) -> tuple[bool, str]:
    base = f"http://httpbin.{APP_NS}:8000"
    first = from_pod(mesh, "sleep", APP_NS, f"{base}/status/500")
    after = [from_pod(mesh, "sleep", APP_NS, f"{base}/get").status for _ in range(3)]
    return all(s == 200 for s in after), f"/status/500 gave {first.status}; then /get: {after}"


def concurrent_calls(mesh: Backend) -> tuple[bool, str]:
    urls = [f"http://httpbin.{APP_NS}:8000/delay/2"] * 4
    statuses = [r.status for r in from_pod_concurrently(mesh, "sleep", APP_NS, urls)]
    return all(s == 200 for s in statuses), f"4 concurrent /delay/2 calls: {statuses}"


# --- manifests ---------------------------------------------------------------------------------


def _sample(path: str) -> list[dict[str, Any]]:
    """The manifests of a sample (found from any folder, as `mesh.apply` finds it)."""
    return [copy.deepcopy(r.body) for r in load(path)]


def _doc(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": _API.get(kind, "v1"), "kind": kind,
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": spec}, sort_keys=False)


def _strict(namespace: str) -> str:
    return _doc("PeerAuthentication", "default", namespace, {"mtls": {"mode": "STRICT"}})


def _permissive(namespace: str) -> str:
    return _doc("PeerAuthentication", "default", namespace, {"mtls": {"mode": "PERMISSIVE"}})


def _subsets(v3_version: str = "v3") -> list[dict[str, Any]]:
    return [{"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
            {"name": "v3", "labels": {"version": v3_version}}]


def _reviews_rule(**spec: Any) -> str:
    return _doc("DestinationRule", "reviews", BOOKINFO_NS, {"host": "reviews", **spec})


def _reviews_to(*http: dict[str, Any]) -> str:
    return _doc("VirtualService", "reviews", BOOKINFO_NS, {"hosts": ["reviews"],
                                                            "http": list(http)})


def _route(subset: str, host: str = "reviews") -> dict[str, Any]:
    return {"route": [{"destination": {"host": host, "subset": subset}}]}


JASON = {"headers": {"end-user": {"exact": "jason"}}}


def _bookinfo_gateway(gateway_hosts: list[str], vs_hosts: list[str]) -> str:
    gateway, service = _sample(BOOKINFO_GATEWAY)
    gateway["spec"]["servers"][0]["hosts"] = gateway_hosts
    service["spec"]["hosts"] = vs_hosts
    for doc in (gateway, service):
        doc["metadata"]["namespace"] = BOOKINFO_NS
    return yaml.safe_dump_all([gateway, service], sort_keys=False)


def _httpbin_service(port: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "httpbin", "namespace": APP_NS, "labels": {"app": "httpbin",
                                                          "service": "httpbin"}},
        "spec": {"ports": [port], "selector": {"app": "httpbin"}}}, sort_keys=False)


def _httpbin_rule(**spec: Any) -> str:
    return _doc("DestinationRule", "httpbin", APP_NS, {"host": "httpbin", **spec})


def _httpbin_route(**http: Any) -> str:
    return _doc("VirtualService", "httpbin", APP_NS, {
        "hosts": ["httpbin"], "http": [{**http, "route": [{"destination": {"host": "httpbin"}}]}]})


def _late_namespace() -> str:
    httpbin = _sample(HTTPBIN)
    for doc in httpbin:
        doc["metadata"]["namespace"] = LATE_NS
    return yaml.safe_dump_all(httpbin, sort_keys=False)


HTTPBIN_URL = f"http://httpbin.{APP_NS}:8000"
PAGE_HOST = "bookinfo.example.com"

CATALOGUE: tuple[Scenario, ...] = (
    Scenario(
        "mtls-disable-strict", "503s after a DestinationRule turned TLS off",
        "Since this morning's change the Bookinfo product page says \"Sorry, product reviews "
        "are currently unavailable for this book.\" The security team enforces STRICT mTLS in "
        "bookinfo-test, and that must stay.",
        "security",
        Change(apply=(_strict(BOOKINFO_NS), _reviews_rule(trafficPolicy={"tls": {
            "mode": "DISABLE"}}))),
        (Check("every product page shows reviews", reviews_shown),),
        ("Read productpage's sidecar log (`kubectl logs deploy/productpage-v1 -c istio-proxy`):"
         " what response flag do the calls to reviews carry?",
         "`istioctl x describe pod` of a reviews pod: which DestinationRule applies, and what "
         "does it say about TLS? What does the PeerAuthentication require?",
         "A DestinationRule's `tls` replaces auto mTLS: DISABLE sends plaintext to a sidecar "
         "that accepts only mTLS."),
        "Make the client side speak mesh mTLS again: `tls.mode: ISTIO_MUTUAL` in the "
        "DestinationRule (or drop its `tls`, and auto mTLS does it). Relaxing the "
        "PeerAuthentication to PERMISSIVE also makes the page work, but then any plaintext "
        "client outside the mesh can call reviews.",
        Change(apply=(_reviews_rule(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}}),)),
        Change(apply=(_permissive(BOOKINFO_NS),)),
        guards=(Check("plaintext from outside the mesh to reviews is refused (STRICT holds)",
                      plaintext_refused(OUTSIDE_NS,
                                        f"http://reviews.{BOOKINFO_NS}:9080/reviews/0")),),
        tools="productpage's access log: 503 UC or URX toward outbound|9080||reviews; "
              "LAB0701 from istioctl analyze",
    ),
    Scenario(
        "subset-label-typo", "Everyone to reviews v3, and reviews vanish",
        "We routed everyone to reviews v3 (red stars). Now the product page says reviews are "
        "unavailable.",
        "traffic",
        Change(apply=(_reviews_rule(subsets=_subsets(v3_version="3")), _reviews_to(
            _route("v3")))),
        (Check("every product page shows reviews v3 (red stars)", reviews_all("v3")),),
        ("What does `istioctl proxy-config endpoints` of productpage show for the v3 cluster?",
         "Compare the subset's labels in the DestinationRule with `kubectl get pods "
         "--show-labels`.",
         "The subset v3 selects `version: \"3\"`; the pods say `version: v3`."),
        "Give subset v3 the pods' label, `version: v3`. Routing to `reviews` without a subset "
        "brings the page back but spreads users over v1, v2 and v3.",
        Change(apply=(_reviews_rule(subsets=_subsets()),)),
        Change(apply=(_reviews_to({"route": [{"destination": {"host": "reviews"}}]}),)),
        tools="503 UH (no healthy upstream) in productpage's log; LAB0214 from analyze",
    ),
    Scenario(
        "gateway-host-mismatch", "A VirtualService the gateway ignores",
        f"`curl -H 'Host: {PAGE_HOST}' http://$INGRESS/productpage` returns 404 since the "
        f"gateway was restricted to {PAGE_HOST}. Other hosts must keep getting 404.",
        "traffic",
        Change(apply=(_bookinfo_gateway([PAGE_HOST], ["bookinfo.example.org"]),)),
        (Check(f"the gateway serves /productpage for {PAGE_HOST}",
               ingress_gets("/productpage", PAGE_HOST, 200)),),
        ("Which route does the gateway hold? `istioctl proxy-config routes "
         "deploy/istio-ingressgateway -n istio-system`",
         "`istioctl analyze -n bookinfo-test`: look for IST0132.",
         "A VirtualService bound to a Gateway applies only to hosts the Gateway's server "
         "lists."),
        f"Put {PAGE_HOST} in the VirtualService's hosts. Opening the Gateway to `*` (and the "
        "VirtualService with it) serves every host, which the team did not want.",
        Change(apply=(_bookinfo_gateway([PAGE_HOST], [PAGE_HOST]),)),
        Change(apply=(_bookinfo_gateway(["*"], ["*"]),)),
        guards=(Check("the gateway answers 404 for another host",
                      ingress_gets("/productpage", "other.example.net", 404)),),
        tools="404 NR in the gateway's access log; IST0132 from analyze",
    ),
    Scenario(
        "injected-too-late", "Labelled for injection, still no sidecar",
        f"We labelled namespace {LATE_NS} with istio-injection=enabled, but its httpbin still "
        "gets calls without a client certificate (no X-Forwarded-Client-Cert reaches it).",
        "installation",
        Change(label=((LATE_NS, {}),), apply=(_late_namespace(),),
               then=Change(label=((LATE_NS, {"istio-injection": "enabled"}),))),
        (Check(f"httpbin in {LATE_NS} has a sidecar that receives mTLS",
               pod_gets(APP_NS, f"http://httpbin.{LATE_NS}:8000/headers",
                        contains="X-Forwarded-Client-Cert")),),
        (f"`kubectl get pods -n {LATE_NS}`: how many containers does httpbin's pod have?",
         f"`istioctl analyze -n {LATE_NS}` reports IST0103 for it.",
         "Injection happens when a pod is created; the label does not touch running pods."),
        f"Restart the workload: `kubectl rollout restart deploy/httpbin -n {LATE_NS}`. An "
        "annotation on the Deployment's own metadata changes nothing (injection reads the pod "
        "template).",
        Change(restart=(f"httpbin.{LATE_NS}",)),
        Change(apply=(_late_namespace().replace(
            "kind: Deployment\nmetadata:\n",
            "kind: Deployment\nmetadata:\n  annotations:\n    sidecar.istio.io/inject: 'true'\n"),
        )),
        tools="IST0103 PodMissingProxy; `istioctl proxy-status` lists no proxy for the pod",
        namespaces=(LATE_NS,),
    ),
    Scenario(
        "weights-swapped", "The canary gets the lion's share",
        "reviews v3 was meant to get 10% of the traffic as a canary and v1 the rest; most "
        "users now see red stars.",
        "traffic",
        Change(apply=(_reviews_rule(subsets=_subsets()), _reviews_to({"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 10},
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 90}]}))),
        (Check("about 10% of pages from v3, the rest from v1", canary_share),),
        ("Count the versions over 50 pages: `traffic.send(mesh, n=50)`.",
         "`istioctl proxy-config routes deploy/productpage-v1 -n bookinfo-test --name 9080 "
         "-o json`: weightedClusters.",
         "Each destination's `weight` is its share: v1 has 10 and v3 has 90."),
        "Give v1 weight 90 and v3 weight 10. Removing the VirtualService spreads pages over "
        "v1, v2 and v3.",
        Change(apply=(_reviews_to({"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 10}]}),)),
        Change(delete=(f"VirtualService/reviews.{BOOKINFO_NS}",)),
        tools="`istioctl x describe pod` shows the weights; Istio's metrics by version",
    ),
    Scenario(
        "default-route-first", "jason never sees black stars",
        "User jason should get reviews v2 (black stars); he sees the same as everyone else "
        "(v1, no stars).",
        "traffic",
        Change(apply=(_reviews_rule(subsets=_subsets()), _reviews_to(
            _route("v1"), {"match": [JASON], **_route("v2")}))),
        (Check("jason sees reviews v2 on every page", reviews_all("v2", user="jason")),),
        ("`istioctl analyze -n bookinfo-test`: IST0130.",
         "Envoy tries a VirtualService's rules in order and takes the first that matches.",
         "A rule without `match` matches everything: it must come last."),
        "Put the `end-user: jason` rule first and the catch-all rule last. Deleting the "
        "catch-all rule serves jason but leaves everyone else without a route to reviews.",
        Change(apply=(_reviews_to({"match": [JASON], **_route("v2")}, _route("v1")),)),
        Change(apply=(_reviews_to({"match": [JASON], **_route("v2")}),)),
        guards=(Check("signed-out users see reviews v1 on every page", reviews_all("v1")),),
        tools="IST0130 VirtualServiceUnreachableRule",
    ),
    Scenario(
        "outlier-ejects-all", "One error takes httpbin down",
        "After a single 500 from httpbin every call fails with 503 for minutes.",
        "resilience",
        Change(apply=(_httpbin_rule(trafficPolicy={"outlierDetection": {
            "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3m",
            "maxEjectionPercent": 100}}),)),
        (Check("one 500 does not make httpbin unavailable", survives_one_error),),
        ("The sleep pod's access log: which flag do the 503s carry?",
         "`istioctl proxy-config endpoints deploy/sleep -n practice --cluster "
         "\"outbound|8000||httpbin.practice.svc.cluster.local\"`: OUTLIER CHECK.",
         "consecutive5xxErrors: 1 ejects the only endpoint after one error; Istio sets no "
         "panic threshold, so nothing is left to send to."),
        "Eject only after several errors (`consecutive5xxErrors: 5`), or keep outlier "
        "detection for services with several endpoints. A shorter baseEjectionTime still "
        "ejects the only pod after each error.",
        Change(apply=(_httpbin_rule(trafficPolicy={"outlierDetection": {
            "consecutive5xxErrors": 5, "interval": "1s", "baseEjectionTime": "30s",
            "maxEjectionPercent": 100}}),)),
        Change(apply=(_httpbin_rule(trafficPolicy={"outlierDetection": {
            "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "30s",
            "maxEjectionPercent": 100}}),)),
        tools="503 UH in sleep's access log; endpoints show OUTLIER CHECK FAILED",
        namespaces=(APP_NS,),
    ),
    Scenario(
        "timeout-below-per-try", "Retries that never get a chance",
        "httpbin's `/delay/2` fails with 504 after one second, although each try is allowed "
        "three seconds.",
        "resilience",
        Change(apply=(_httpbin_route(timeout="1s", retries={"attempts": 2,
                                                             "perTryTimeout": "3s"}),)),
        (Check("/delay/2 succeeds", pod_gets(APP_NS, f"{HTTPBIN_URL}/delay/2")),),
        ("sleep's access log: which flag does the 504 carry?",
         "`istioctl analyze -n practice`: LAB0702.",
         "The route's `timeout` bounds the whole request, retries included."),
        "Make the route timeout at least the per-try timeout (e.g. `timeout: 10s`). Dropping "
        "perTryTimeout keeps the 1 s bound.",
        Change(apply=(_httpbin_route(timeout="10s", retries={"attempts": 2,
                                                              "perTryTimeout": "3s"}),)),
        Change(apply=(_httpbin_route(timeout="1s", retries={"attempts": 2}),)),
        tools="504 UT in sleep's access log; LAB0702 from analyze",
        namespaces=(APP_NS,),
    ),
    Scenario(
        "fault-left-on", "Ratings down for everyone",
        "Every product page from reviews v2 says \"Ratings service is currently "
        "unavailable\". We only meant to test that error for one user.",
        "resilience",
        Change(apply=(_reviews_rule(subsets=_subsets()), _reviews_to(_route("v2")),
                      _doc("DestinationRule", "ratings", BOOKINFO_NS, {
                          "host": "ratings", "subsets": [{"name": "v1",
                                                          "labels": {"version": "v1"}}]}),
                      _doc("VirtualService", "ratings", BOOKINFO_NS, {
                          "hosts": ["ratings"], "http": [{
                              "fault": {"abort": {"percentage": {"value": 100},
                                                  "httpStatus": 500}},
                              **_route("v1", "ratings")}]}))),
        (Check("every page shows ratings", ratings_shown),),
        ("reviews-v2's sidecar log: which flag do the calls to ratings carry?",
         "`kubectl get virtualservice -n bookinfo-test -o yaml`: what does ratings' rule do?",
         "An abort without `match` applies to every request."),
        "Remove the fault (or match it to the test user only). Lowering its percentage still "
        "fails a share of everyone's pages.",
        Change(apply=(_doc("VirtualService", "ratings", BOOKINFO_NS, {
            "hosts": ["ratings"], "http": [_route("v1", "ratings")]}),)),
        Change(apply=(_doc("VirtualService", "ratings", BOOKINFO_NS, {
            "hosts": ["ratings"], "http": [{
                "fault": {"abort": {"percentage": {"value": 50}, "httpStatus": 500}},
                **_route("v1", "ratings")}]}),)),
        tools="500 FI in reviews-v2's access log",
    ),
    Scenario(
        "strict-legacy-client", "A legacy client locked out by STRICT",
        f"After STRICT mTLS was enabled in {APP_NS}, the sleep client in {LEGACY_NS} cannot "
        "call httpbin any more. STRICT must stay: clients outside the mesh stay locked out.",
        "security",
        Change(apply=(_strict(APP_NS),)),
        (Check(f"sleep in {LEGACY_NS} gets httpbin's /get",
               pod_gets(LEGACY_NS, f"{HTTPBIN_URL}/get")),),
        (f"`kubectl get pods -n {LEGACY_NS}`: does the client have a sidecar?",
         "`istioctl x describe pod` of httpbin: which PeerAuthentication applies?",
         "STRICT accepts only mesh mTLS: the client must join the mesh."),
        f"Bring the client into the mesh: `kubectl label namespace {LEGACY_NS} "
        f"istio-injection=enabled` and `kubectl rollout restart deploy/sleep -n {LEGACY_NS}`. "
        "PERMISSIVE lets it in, and every other plaintext client with it.",
        Change(label=((LEGACY_NS, {"istio-injection": "enabled"}),),
               restart=(f"sleep.{LEGACY_NS}",)),
        Change(apply=(_permissive(APP_NS),)),
        guards=(Check(f"plaintext from {OUTSIDE_NS} to httpbin is refused (STRICT holds)",
                      plaintext_refused(OUTSIDE_NS, f"{HTTPBIN_URL}/get")),),
        tools="the client gets a 503 on the local mesh (from its kube-proxy stand-in), a "
              "connection reset on a cluster; IST0102 for the client's namespace",
        namespaces=(APP_NS, LEGACY_NS),
    ),
    Scenario(
        "pool-overflow", "503s under load",
        "When four clients call httpbin's `/delay/2` at once, half of them get 503.",
        "resilience",
        Change(apply=(_httpbin_rule(trafficPolicy={"connectionPool": {
            "tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}}),)),
        (Check("four concurrent calls all succeed", concurrent_calls),),
        ("sleep's access log: which flag do the 503s carry?",
         "`istioctl proxy-config cluster deploy/sleep -n practice --fqdn httpbin.practice."
         "svc.cluster.local -o json`: circuitBreakers.",
         "One connection and one pending request: the third and fourth concurrent calls "
         "overflow."),
        "Raise both limits to what the service must take (e.g. 10 connections, 10 pending). "
        "Raising only maxConnections to 2 still overflows the fourth call.",
        Change(apply=(_httpbin_rule(trafficPolicy={"connectionPool": {
            "tcp": {"maxConnections": 10}, "http": {"http1MaxPendingRequests": 10}}}),)),
        Change(apply=(_httpbin_rule(trafficPolicy={"connectionPool": {
            "tcp": {"maxConnections": 2}, "http": {"http1MaxPendingRequests": 1}}}),)),
        tools="503 UO in sleep's access log; upstream_rq_pending_overflow in /stats",
        namespaces=(APP_NS,),
    ),
    Scenario(
        "wrong-target-port", "httpbin refuses every call",
        "Every call to httpbin fails with 503 since its Service was edited.",
        "installation",
        Change(apply=(_httpbin_service({"name": "http", "port": 8000, "targetPort": 8080}),)),
        (Check("httpbin's /get answers 200", pod_gets(APP_NS, f"{HTTPBIN_URL}/get")),),
        ("sleep's access log: which flag, and which upstream host?",
         "`istioctl analyze -n practice`: LAB0206.",
         "targetPort must be the port the container listens on (80)."),
        "Set targetPort back to 80, the container's port. Changing the Service port instead "
        "still sends to 8080, where nothing listens.",
        Change(apply=(_httpbin_service({"name": "http", "port": 8000, "targetPort": 80}),)),
        Change(apply=(_httpbin_service({"name": "http", "port": 80, "targetPort": 8080}),)),
        tools="503 UF/URX (connection refused) in sleep's log; LAB0206 from analyze",
        namespaces=(APP_NS,),
    ),
)


def scenario(name: str) -> Scenario:
    """The catalogue entry called `name`."""
    for entry in CATALOGUE:
        if entry.name == name:
            return entry
    known = ", ".join(s.name for s in CATALOGUE)
    raise KeyError(f'no scenario "{name}" in the catalogue (known: {known})')
