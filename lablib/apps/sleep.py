"""sleep: the placeholder for Istio's `sleep` sample pod, which only ever runs `sleep infinity`.

Learners "exec" curl inside it; the local backend runs that curl as its own process with this
workload's sidecar as proxy. This process only marks the workload as running.
"""

from __future__ import annotations

import argparse

from ._runtime import block_stop_signals, log, wait_for_stop_signal


def main(argv: list[str] | None = None) -> None:
    """Wait for SIGTERM."""
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    block_stop_signals()
    log("sleep: waiting for SIGTERM")
    wait_for_stop_signal()
    log("sleep stopped")


if __name__ == "__main__":
    main()
