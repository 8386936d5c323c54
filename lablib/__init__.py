"""lablib: the helper package behind the Istio labs.

    import lablib
    mesh = lablib.connect()          # the local mesh, or LAB_BACKEND=kubernetes
    mesh.install()
"""

from __future__ import annotations

import os

from .backend import Backend
from .errors import BackendError, ConfigError, LabError, NotFoundError, ProxyRejectedError

__all__ = [
    "Backend", "BackendError", "ConfigError", "LabError", "NotFoundError",
    "ProxyRejectedError", "connect",
]


def connect(backend: str | None = None) -> Backend:
    """The backend named by `backend`, else `$LAB_BACKEND`, else the local mesh."""
    name = (backend or os.environ.get("LAB_BACKEND") or "local").lower()
    if name == "local":
        from .local.client import LocalBackend

        return LocalBackend()
    if name == "kubernetes":
        from .kube.backend import KubernetesBackend

        return KubernetesBackend()
    raise BackendError(f'unknown backend "{name}": use "local" (the default) or "kubernetes"')
