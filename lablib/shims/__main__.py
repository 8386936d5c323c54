"""`python -m lablib.shims kubectl|istioctl ARGS...`: what the shim scripts run."""

from __future__ import annotations

import sys

from . import istioctl_main, kubectl_main

TOOLS = {"kubectl": kubectl_main, "istioctl": istioctl_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TOOLS:
        print("usage: python -m lablib.shims kubectl|istioctl ARGS...", file=sys.stderr)
        return 2
    return TOOLS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
