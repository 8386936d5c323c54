"""What `istioctl install` installs: a profile, then `--set` keys, as istioctl reads them.

Profiles as Istio ships them (manifests/profiles/*.yaml): `default` (istiod and the ingress
gateway), `demo` (plus the egress gateway, and access logs on), `minimal` (istiod only) and
`empty` (nothing). `components.*.enabled` turns a component on or off; `meshConfig.*` goes to
config/meshconfig.py; `values.pilot.env.*` are istiod's feature flags. Every other key is
refused by name, never dropped: the local mesh cannot honour it, a cluster can.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError, Diagnostic
from .fidelity import MESH_CONFIG, REFUSED
from .meshconfig import RESOURCE, MeshConfig, mesh_config
from .model import Resource

PILOT, INGRESS, EGRESS = "pilot", "ingressGateways", "egressGateways"
PROFILES: dict[str, frozenset[str]] = {
    "default": frozenset({PILOT, INGRESS}),
    "demo": frozenset({PILOT, INGRESS, EGRESS}),
    "minimal": frozenset({PILOT}),
    "empty": frozenset(),
}
# The one gateway of each kind the local mesh runs, by the name istioctl gives it.
GATEWAY_NAMES = {INGRESS: "istio-ingressgateway", EGRESS: "istio-egressgateway"}
# What istioctl prints for each installed component, in its order.
INSTALLED_LINES = {PILOT: "Istiod installed", INGRESS: "Ingress gateways installed",
                   EGRESS: "Egress gateways installed"}
COMPONENT_TITLES = {PILOT: "Istiod", INGRESS: "Ingress gateways", EGRESS: "Egress gateways"}

CODE = "LAB0407"
# Where istiod's Deployment records the profile it was installed with (the IstioOperator
# `installed-state` kubectl shows reads it back).
PROFILE_ANNOTATION = "install.istio.io/profile"
_GATEWAY_KEY = re.compile(r"^components\.(ingressGateways|egressGateways)\[(\d+)\]\.(\w+)$")


@dataclass(frozen=True)
class InstallPlan:
    profile: str
    components: frozenset[str]
    pilot_env: Mapping[str, str] = field(default_factory=dict)
    mesh_config: MeshConfig = field(default_factory=MeshConfig)

    def lines(self) -> list[str]:
        """istioctl's ✔ lines for this install."""
        return ["Istio core installed",
                *[line for part, line in INSTALLED_LINES.items() if part in self.components],
                "Installation complete"]

    def includes(self, resource: Resource) -> bool:
        """Whether a resource of the install manifest belongs to an enabled component (the
        istio-system Namespace is Istio core, always installed)."""
        part = component_of(resource)
        return part is None or part in self.components


def component_of(resource: Resource) -> str | None:
    """The component an install manifest's resource belongs to (None: Istio core)."""
    if resource.kind == "Namespace":
        return None
    for part, name in GATEWAY_NAMES.items():
        if resource.name.startswith(name):
            return part
    return PILOT


def components_text(plan: InstallPlan) -> str:
    """`Istio core, Istiod, and Ingress gateways`, as istioctl's confirmation lists them."""
    names = ["Istio core", *[COMPONENT_TITLES[p] for p in COMPONENT_TITLES
                             if p in plan.components]]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]


def _refusal(key: str, message: str, fix: str) -> Diagnostic:
    return Diagnostic(CODE, "Error", RESOURCE, message, field=key, fix=fix)


def _boolean(key: str, text: str, problems: list[Diagnostic]) -> bool | None:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    problems.append(_refusal(key, f"{text!r} is not true or false", f"--set {key}=true"))
    return None


def _component(key: str, text: str, components: set[str], problems: list[Diagnostic]) -> None:
    if key == "components.pilot.enabled":
        on = _boolean(key, text, problems)
        if on is not None:
            (components.add if on else components.discard)(PILOT)
        return
    if key == "components.cni.enabled":
        if _boolean(key, text, problems):
            problems.append(_refusal(key, "the Istio CNI plugin has no local meaning: the "
                                     "local mesh has no iptables to set up; it works on a "
                                     "cluster (LAB_BACKEND=kubernetes)", "leave cni disabled"))
        return
    gateway = _GATEWAY_KEY.match(key)
    if gateway:
        part, index, leaf = gateway.groups()
        name = GATEWAY_NAMES[part]
        if index != "0":
            problems.append(_refusal(key, f"the local mesh runs one {name}; a second gateway "
                                     "works on a cluster (LAB_BACKEND=kubernetes)",
                                     f"use components.{part}[0]"))
        elif leaf == "enabled":
            on = _boolean(key, text, problems)
            if on is not None:
                (components.add if on else components.discard)(part)
        elif leaf == "name":
            if text != name:
                problems.append(_refusal(key, f"the local mesh's gateway is named {name}; "
                                         f"other names work on a cluster "
                                         "(LAB_BACKEND=kubernetes)", f"--set {key}={name}"))
        else:
            problems.append(_refusal(key, f"{leaf} of a gateway component is not supported on "
                                     "the local mesh; it works on a cluster "
                                     "(LAB_BACKEND=kubernetes)", "remove it"))
        return
    problems.append(_refusal(key, "is not a component setting the local mesh supports; it "
                             "works on a cluster (LAB_BACKEND=kubernetes)",
                             "use components.pilot.enabled, components.ingressGateways[0]."
                             "enabled or components.egressGateways[0].enabled"))


def _not_honoured(key: str) -> list[Diagnostic]:
    """A meshConfig key the fidelity ledger says the local mesh does not honour (yet)."""
    leaf = key.removeprefix("meshConfig.")
    entry = MESH_CONFIG.get(leaf) or MESH_CONFIG.get(leaf.partition("[")[0])
    if entry is None or entry.status != REFUSED:
        return []
    return [_refusal(key, f"{key} is not supported on the local mesh; it works on a cluster "
                     "(LAB_BACKEND=kubernetes)", entry.note)]


def install_plan(profile: str, values: Mapping[str, str]) -> InstallPlan:
    """The plan for `istioctl install --set profile=P --set K=V...`; ConfigError naming every
    key the local mesh cannot honour (nothing is installed then)."""
    problems: list[Diagnostic] = []
    if profile not in PROFILES:
        known = ", ".join(PROFILES)
        problems.append(_refusal("profile", f'profile "{profile}" is not available on the local '
                                 f"mesh (it has {known}); it works on a cluster "
                                 "(LAB_BACKEND=kubernetes)", f"use one of {known}"))
    components = set(PROFILES.get(profile, frozenset()))
    pilot_env: dict[str, str] = {}
    for key, value in values.items():
        text = str(value)
        if key.startswith("meshConfig."):
            continue  # mesh_config below reads and checks them
        if key == "revision":
            if text != "default":
                problems.append(_refusal(key, f'revision "{text}": the local mesh installs '
                                         'only the "default" revision; revisions and canary '
                                         "upgrades work on a cluster (LAB_BACKEND=kubernetes)",
                                         "leave --revision out"))
        elif key.startswith("values.pilot.env.") and key.count(".") == 3:
            pilot_env[key.rsplit(".", 1)[1]] = text
        elif key.startswith("components."):
            _component(key, text, components, problems)
        else:
            problems.append(_refusal(
                key, "is not an install setting the local mesh supports; it works on a "
                "cluster (LAB_BACKEND=kubernetes)",
                "remove it; the local mesh takes profile, components.*.enabled, meshConfig.* "
                "and values.pilot.env.*"))
    for key in values:
        if key.startswith("meshConfig."):
            problems.extend(_not_honoured(key))
    try:
        config = mesh_config(profile if profile in PROFILES else "default", values)
    except ConfigError as exc:
        problems.extend(exc.diagnostics)
        config = MeshConfig()
    if problems:
        raise ConfigError(problems)
    return InstallPlan(profile, frozenset(components), pilot_env, config)
