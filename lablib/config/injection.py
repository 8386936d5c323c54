"""Whether a pod gets a sidecar, as Istio's injection webhooks decide for the installed
revision.

The local mesh installs one revision, `default`, whose webhooks select: a namespace labelled
`istio-injection=enabled`, or one labelled `istio.io/rev=default` without an
`istio-injection` label; in any namespace, a pod labelled `sidecar.istio.io/inject=true` or
`istio.io/rev=default`. A pod label `sidecar.istio.io/inject=false`, or a namespace labelled
`istio-injection=disabled`, turns injection off; so does the pod annotation
`sidecar.istio.io/inject: "false"`. Any other revision is not installed: the fidelity ledger
refuses it with a diagnostic rather than run a pod that looks injected and is not.
"""

from __future__ import annotations

from collections.abc import Mapping

REVISION = "default"
REV_LABEL = "istio.io/rev"
INJECTION_LABEL = "istio-injection"
INJECT = "sidecar.istio.io/inject"


def injected(namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str],
             pod_annotations: Mapping[str, str]) -> bool:
    """Whether the `default` revision's webhook injects a pod with these labels."""
    if pod_annotations.get(INJECT) == "false" or pod_labels.get(INJECT) == "false":
        return False
    namespace_choice = namespace_labels.get(INJECTION_LABEL)
    if namespace_choice == "disabled":
        return False
    if pod_labels.get(INJECT) == "true" or pod_labels.get(REV_LABEL) == REVISION:
        return True
    if namespace_choice == "enabled":
        return True
    return namespace_choice is None and namespace_labels.get(REV_LABEL) == REVISION
