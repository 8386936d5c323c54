"""What every shim command shares: reaching the mesh, and errors printed as the tools print
them (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import BackendError, ConfigError, LabError, NotFoundError, ProxyRejectedError
from ..local.client import LocalBackend
from ..local.state import StateDir
from .flags import UsageError

__all__ = ["ISTIO_VERSION", "OWNER_ENV", "Failure", "connect", "passthrough", "real_tool", "run"]

# The Istio release whose words and defaults the shims follow.
ISTIO_VERSION = "1.20.3"
# The pid whose end stops a mesh the shims start: the `lablib shell` or the notebook kernel.
OWNER_ENV = "LAB_MESH_OWNER"


class Failure(Exception):
    """A failed command: `message` is printed to stderr as is, then the tool exits `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


def connect(start: bool = False) -> LocalBackend:
    """This user's local mesh ($LAB_MESH); started if `start`, else it must be running."""
    state = StateDir()
    if start:
        owner = os.environ.get(OWNER_ENV, "")
        return LocalBackend(state, owner=int(owner) if owner.isdigit() else 0)
    backend = LocalBackend.attach(state)
    if backend is None:
        raise Failure(f'The connection to the local mesh "{state.mesh}" was refused: it is not '
                      f"running. Start it with: istioctl install --set profile=demo -y")
    return backend


def real_tool(name: str) -> str | None:
    """The real `kubectl`/`istioctl` on PATH, skipping the folders that hold these shims."""
    from .env import is_shim

    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and not is_shim(candidate):
            return str(candidate)
    return None


def passthrough(tool: str, argv: Sequence[str]) -> int:
    """On a cluster the shims are the real tools."""
    binary = real_tool(tool)
    if binary is None:
        print(f"error: LAB_BACKEND=kubernetes but no real {tool} is on PATH; install {tool}, "
              f"or unset LAB_BACKEND to use the local mesh", file=sys.stderr)
        return 1
    return subprocess.call([binary, *argv])


def on_cluster() -> bool:
    return (os.environ.get("LAB_BACKEND") or "local").lower() == "kubernetes"


def _message(exc: LabError) -> str:
    text = str(exc)
    if isinstance(exc, ConfigError):
        return "error: " + text
    if text.startswith(("error:", "Error")):
        return text
    if isinstance(exc, NotFoundError):
        return "Error from server (NotFound): " + text
    if isinstance(exc, ProxyRejectedError):
        return "Error from server (Envoy rejected the config): " + text
    return "error: " + text


def run(body: Callable[[], int], usage_hint: str, error_word: str = "error") -> int:
    """Run one command; every failure becomes the tool's kind of message and exit code."""
    try:
        return body()
    except UsageError as exc:
        print(f"{error_word}: {exc}", file=sys.stderr)
        if usage_hint and exc.hint:
            print(usage_hint, file=sys.stderr)
        return 1
    except Failure as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    except (LabError, BackendError) as exc:
        message = _message(exc)
        if error_word == "Error" and message.startswith("error: "):
            message = "Error: " + message[len("error: "):]
        print(message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `kubectl get ... | head`: the reader left; say nothing, as kubectl does.
        sys.stderr.close()
        return 0
    except Exception as exc:  # a bug in the shim: say so plainly, details only on request
        if os.environ.get("LAB_DEBUG"):
            traceback.print_exc()
        print(f"{error_word}: internal error in the lablib shim: {type(exc).__name__}: {exc} "
              f"(set LAB_DEBUG=1 for details)", file=sys.stderr)
        return 1


