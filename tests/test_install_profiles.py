"""istioctl install's profiles and --set keys: honoured as istioctl does, or refused by name."""

from __future__ import annotations

import pytest

from lablib.config.install import EGRESS, INGRESS, PILOT, components_text, install_plan
from lablib.config.loader import load
from lablib.errors import ConfigError
from lablib.local.mesh import ISTIO_SYSTEM_MANIFEST


@pytest.mark.parametrize("profile, components", [
    ("default", {PILOT, INGRESS}),
    ("demo", {PILOT, INGRESS, EGRESS}),
    ("minimal", {PILOT}),
    ("empty", set()),
])
def test_profiles_install_what_istioctl_installs(profile, components):
    assert install_plan(profile, {}).components == components


def test_the_default_profile_has_no_egress_gateway_in_the_manifest_it_applies():
    plan = install_plan("default", {})
    names = {r.name for r in load(str(ISTIO_SYSTEM_MANIFEST)) if plan.includes(r)}
    assert "istio-ingressgateway" in names and "istiod" in names
    assert not any(name.startswith("istio-egressgateway") for name in names)
    assert plan.lines() == ["Istio core installed", "Istiod installed",
                            "Ingress gateways installed", "Installation complete"]
    assert components_text(plan) == "Istio core, Istiod, and Ingress gateways"


def test_components_turn_gateways_on_and_off():
    plan = install_plan("default", {"components.egressGateways[0].name": "istio-egressgateway",
                                    "components.egressGateways[0].enabled": "true",
                                    "components.ingressGateways[0].enabled": "false"})
    assert plan.components == {PILOT, EGRESS}


def test_meshconfig_and_pilot_env_are_read():
    plan = install_plan("demo", {"meshConfig.enableAutoMtls": "false",
                                 "meshConfig.defaultConfig.holdApplicationUntilProxyStarts":
                                     "true",
                                 "values.pilot.env.ENABLE_TLS_ON_SIDECAR_INGRESS": "true"})
    assert plan.mesh_config.enable_auto_mtls is False
    assert plan.mesh_config.hold_application_until_proxy_starts is True
    assert plan.pilot_env == {"ENABLE_TLS_ON_SIDECAR_INGRESS": "true"}


def test_a_meshconfig_key_the_local_mesh_does_not_honour_yet_is_refused():
    install_plan("demo", {"meshConfig.accessLogFile": "/dev/stdout"})  # honoured now
    with pytest.raises(ConfigError) as caught:
        install_plan("demo", {"meshConfig.extensionProviders[0].name": "ext-authz"})
    assert "meshConfig.extensionProviders[0].name is not supported on the local mesh" in \
        str(caught.value)


@pytest.mark.parametrize("profile, values, named", [
    ("ambient", {}, "profile"),
    ("default", {"values.global.proxy.privileged": "true"}, "values.global.proxy.privileged"),
    ("default", {"components.cni.enabled": "true"}, "components.cni.enabled"),
    ("default", {"components.ingressGateways[1].enabled": "true"},
     "components.ingressGateways[1].enabled"),
    ("default", {"components.egressGateways[0].name": "my-egress"},
     "components.egressGateways[0].name"),
    ("default", {"meshConfig.protocolDetectionTimeout": "1s"},
     "meshConfig.protocolDetectionTimeout"),
    ("default", {"revision": "canary"}, "revision"),
    ("default", {"hub": "docker.io/istio"}, "hub"),
])
def test_every_other_key_is_refused_by_name(profile, values, named):
    with pytest.raises(ConfigError) as caught:
        install_plan(profile, values)
    text = str(caught.value)
    assert named in text and "LAB_BACKEND=kubernetes" in text
