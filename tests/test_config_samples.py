"""Every manifest the kit ships under samples/ loads and passes schema validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from lablib.config import load, validate

KIT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(p for p in (KIT_ROOT / "samples").rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.skipif(not SAMPLES, reason="no sample manifests written yet")
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: str(p.relative_to(KIT_ROOT)))
def test_sample_loads_without_errors(path: Path) -> None:
    # Istio's addons name istio-system themselves, as Istio's files do.
    namespace = "istio-system" if path.parent.name == "addons" else "samples-test"
    resources = load(path, namespace=namespace)  # raises ConfigError on any Error
    assert resources, f"{path} holds no manifest"
    assert [d for r in resources for d in validate(r) if d.severity == "Error"] == []
