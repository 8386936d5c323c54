"""meshConfig keys from `istioctl install --set meshConfig.K=V`: honoured or refused by name."""

import pytest

from lablib.config.meshconfig import MeshConfig, mesh_config
from lablib.errors import ConfigError


def test_the_demo_profile_logs_access_to_stdout_and_default_does_not():
    assert mesh_config("demo", {}).access_log_file == "/dev/stdout"
    assert mesh_config("default", {}).access_log_file == ""


def test_known_keys_are_parsed_and_other_values_ignored():
    config = mesh_config("demo", {
        "meshConfig.outboundTrafficPolicy.mode": "REGISTRY_ONLY",
        "meshConfig.accessLogEncoding": "JSON",
        "meshConfig.enableAutoMtls": "false",
        "meshConfig.defaultConfig.holdApplicationUntilProxyStarts": "true",
        "values.pilot.env.PILOT_FOO": "1",
    })
    assert config.outbound_traffic_policy == "REGISTRY_ONLY"
    assert config.access_log_encoding == "JSON"
    assert config.enable_auto_mtls is False
    assert config.hold_application_until_proxy_starts is True


def test_an_unknown_key_is_refused_by_name_never_dropped():
    with pytest.raises(ConfigError) as caught:
        mesh_config("demo", {"meshConfig.protocolDetectionTimeout": "1s"})
    text = str(caught.value)
    assert "meshConfig.protocolDetectionTimeout" in text
    assert "LAB_BACKEND=kubernetes" in text


def test_a_bad_value_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="ALLOW_ANY, REGISTRY_ONLY"):
        mesh_config("demo", {"meshConfig.outboundTrafficPolicy.mode": "DENY"})


def test_extension_providers_are_collected_by_name():
    config = mesh_config("demo", {
        "meshConfig.extensionProviders[0].name": "sample-ext-authz-grpc",
        "meshConfig.extensionProviders[0].envoyExtAuthzGrpc.service":
            "ext-authz.foo.svc.cluster.local",
        "meshConfig.extensionProviders[0].envoyExtAuthzGrpc.port": "9000",
    })
    provider = config.extension_providers["sample-ext-authz-grpc"]
    assert provider["envoyExtAuthzGrpc"] == {"service": "ext-authz.foo.svc.cluster.local",
                                            "port": 9000}


def test_an_extension_provider_without_a_name_or_with_an_unknown_type_is_refused():
    with pytest.raises(ConfigError) as caught:
        mesh_config("demo", {"meshConfig.extensionProviders[0].zipkin.service": "z"})
    text = str(caught.value)
    assert "extensionProviders[0].zipkin.service" in text
    assert "extensionProviders[0].name" in text


def test_asking_for_an_unknown_key_in_code_is_a_bug_not_a_default():
    with pytest.raises(KeyError):
        MeshConfig().get("noSuchKey")
