"""`kubectl` and `istioctl` as the Istio docs type them, run against the local mesh.

    lablib kubectl get pods -n bookinfo-test       # or, after eval "$(lablib env)": kubectl ...
    lablib istioctl proxy-config routes POD.istio-system
    lablib shell                                   # a shell where kubectl/istioctl are the shims
    lablib.shims.install_in_kernel()               # `!kubectl ...` in a notebook cell

On the kubernetes backend (LAB_BACKEND=kubernetes) both are the real tools. docs/shims.md
lists the supported subset.
"""

from __future__ import annotations

from collections.abc import Sequence

from .env import env_main, install_in_kernel, shell_main, shim_dir


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """`lablib kubectl ARGS...`."""
    from .kubectl import kubectl_main as main

    return main(argv)


def istioctl_main(argv: Sequence[str] | None = None) -> int:
    """`lablib istioctl ARGS...`."""
    from .istioctl import istioctl_main as main

    return main(argv)


__all__ = ["env_main", "install_in_kernel", "istioctl_main", "kubectl_main", "shell_main",
           "shim_dir"]
