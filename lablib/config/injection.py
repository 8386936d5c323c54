"""Whether a pod gets a sidecar, as Istio's injection webhooks decide for the installed
revision.

The local mesh installs one revision, `default`, whose webhooks select: a namespace labelled
`istio-injection=enabled`, or one labelled `istio.io/rev=default` without an
`istio-injection` label; in a namespace with neither label, a pod labelled
`istio.io/rev=default`, or `sidecar.istio.io/inject=true` without a revision label. A pod
label or annotation `sidecar.istio.io/inject=false` turns injection off, and so does any
`istio-injection` value but `enabled`. Any other revision is not installed: the fidelity
ledger refuses it with a diagnostic rather than run a pod that looks injected and is not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

REVISION = "default"
REV_LABEL = "istio.io/rev"
INJECTION_LABEL = "istio-injection"
INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"  # `istioctl kube-inject` output: what it added


def injected(namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str],
             pod_annotations: Mapping[str, str]) -> bool:
    """Whether the `default` revision's webhooks inject a pod with these labels: the
    namespace webhooks (istio-injection=enabled, or istio.io/rev=default without an
    istio-injection label) and, in a namespace with neither label, the object webhooks
    (pod label istio.io/rev=default, or sidecar.istio.io/inject=true without a revision)."""
    if pod_annotations.get(INJECT) == "false" or pod_labels.get(INJECT) == "false":
        return False
    namespace_choice = namespace_labels.get(INJECTION_LABEL)
    if namespace_choice is not None:
        return namespace_choice == "enabled"
    if REV_LABEL in namespace_labels:
        return namespace_labels[REV_LABEL] == REVISION
    if REV_LABEL in pod_labels:
        return pod_labels[REV_LABEL] == REVISION
    return pod_labels.get(INJECT) == "true"


def injected_names(annotations: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The containers and init containers `istioctl kube-inject` added to a pod template, by
    its status annotation: the local mesh runs its own sidecar in their place."""
    try:
        status = json.loads(str(annotations.get(STATUS) or "{}"))
    except ValueError:
        status = {}
    status = status if isinstance(status, dict) else {}
    return set(status.get("containers") or []), set(status.get("initContainers") or [])


def without_injected(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """A Deployment's body without what kube-inject added to its pod template."""
    body = copy.deepcopy(dict(deployment))
    template = (body.get("spec") or {}).get("template")
    if not isinstance(template, dict):
        return body
    containers, inits = injected_names((template.get("metadata") or {}).get("annotations")
                                       or {})
    spec = template.get("spec")
    if isinstance(spec, dict):
        for key, names in (("containers", containers), ("initContainers", inits)):
            if names and isinstance(spec.get(key), list):
                spec[key] = [c for c in spec[key] if not (isinstance(c, dict)
                                                          and c.get("name") in names)]
                if not spec[key] and key == "initContainers":
                    del spec[key]
    return body
