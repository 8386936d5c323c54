"""Reading cluster objects the way kubectl does: rollout status, pod readiness, exec status."""

from __future__ import annotations

import json
import re
from typing import Any

# The kinds the labs name, by Kind: their API group ("" for the core group) and the words
# kubectl accepts for them (besides the plural, the singular and the Kind itself).
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Pod": ("", ("po",)),
    "Service": ("", ("svc",)),
    "Namespace": ("", ("ns",)),
    "Node": ("", ("no",)),
    "Secret": ("", ()),
    "ConfigMap": ("", ("cm",)),
    "ServiceAccount": ("", ("sa",)),
    "Endpoints": ("", ("ep",)),
    "Event": ("", ("ev",)),
    "Deployment": ("apps", ("deploy",)),
    "ReplicaSet": ("apps", ("rs",)),
    "Gateway": ("networking.istio.io", ("gw",)),
    "VirtualService": ("networking.istio.io", ("vs",)),
    "DestinationRule": ("networking.istio.io", ("dr",)),
    "ServiceEntry": ("networking.istio.io", ("se",)),
    "Sidecar": ("networking.istio.io", ()),
    "EnvoyFilter": ("networking.istio.io", ()),
    "PeerAuthentication": ("security.istio.io", ("pa",)),
    "AuthorizationPolicy": ("security.istio.io", ()),
    "RequestAuthentication": ("security.istio.io", ("ra",)),
    "Telemetry": ("telemetry.istio.io", ()),
}


def _plural(word: str) -> str:
    if word.endswith("s"):
        return word
    return word[:-1] + "ies" if word.endswith("y") else word + "s"


def _words() -> dict[str, str]:
    words: dict[str, str] = {}
    for kind, (_, short) in KINDS.items():
        for word in (kind.lower(), _plural(kind.lower()), *short):
            words.setdefault(word, kind)
    return words


WORDS = _words()

# Istio writes this path into the Envoy metadata of what a resource produced: routes (and
# TCP/TLS filter chains) for a VirtualService, clusters for a DestinationRule.
_KEBAB = re.compile(r"(?<!^)(?=[A-Z])")
MARKED_KINDS = frozenset({"VirtualService", "DestinationRule"})


def kind_of(word: str) -> tuple[str, str | None]:
    """`svc` -> ("Service", ""); `virtualservice.networking.istio.io` -> its Kind and group;
    an unknown word comes back as it is, with group None."""
    lowered = word.lower()
    if lowered in WORDS:
        kind = WORDS[lowered]
        return kind, KINDS[kind][0]
    head, _, group = lowered.partition(".")
    if head in WORDS and group:
        return WORDS[head], group
    return word, None


def kube_word(kind: str, group: str) -> str:
    """kubectl's name for a kind in its output: `service`, `deployment.apps`,
    `virtualservice.networking.istio.io`."""
    return f"{kind.lower()}.{group}" if group else kind.lower()


def config_marker(kind: str, namespace: str, name: str) -> str:
    """The tail of the path Istio writes into Envoy config for this resource, closing quote
    included so `reviews` does not match `reviews-v2`."""
    return f"/namespaces/{namespace}/{_KEBAB.sub('-', kind).lower()}/{name}\""


def rollout_status(deployment: dict[str, Any]) -> tuple[bool, str]:
    """`kubectl rollout status`: whether the Deployment is fully rolled out and available,
    and if not, why (in kubectl's words)."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False, "waiting for the deployment spec update to be observed"
    for condition in status.get("conditions") or []:
        if (condition.get("type") == "Progressing"
                and condition.get("reason") == "ProgressDeadlineExceeded"):
            return False, f"exceeded its progress deadline ({condition.get('message', '')})"
    wanted = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return False, f"{updated} out of {wanted} new replicas have been updated"
    if total > updated:
        return False, f"{total - updated} old replicas are pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    return True, "successfully rolled out"


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why a pod is not ready yet (`ImagePullBackOff`, `0/2 ready`...), or None if it is
    Running with every container ready; a Succeeded pod has no problem."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    phase = status.get("phase")
    if phase == "Succeeded":
        return None
    containers = status.get("containerStatuses") or []
    for c in [*(status.get("initContainerStatuses") or []), *containers]:
        state = c.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            message = waiting.get("message", "")
            return f"{c.get('name')}: {waiting['reason']}" + (f" ({message})" if message else "")
    ready = sum(1 for c in containers if c.get("ready"))
    if phase != "Running" or not containers or ready < len(containers):
        return f"{phase or 'Pending'}, {ready}/{len(containers)} containers ready"
    return None


def exit_status(error_channel: str) -> tuple[int, str]:
    """The exit code from an exec's error channel (a Kubernetes Status), and any message to
    add to stderr: `Success` is 0, an `ExitCode` cause carries the code, anything else is
    kubectl's exit 1 with the server's message."""
    if not error_channel.strip():
        return 1, "error: the exec stream ended without an exit status (connection lost?)\n"
    status = json.loads(error_channel)
    if status.get("status") == "Success":
        return 0, ""
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", 1)), ""
    return 1, f"error: {status.get('message', 'exec failed')}\n"
