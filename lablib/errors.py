"""Errors a learner sees. Each names the resource, the field and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Diagnostic:
    """One finding about one resource, in the manner of `istioctl analyze`.

    `code` is stable (IST0101-style for Istio's own analyzers, LAB01xx for this kit's),
    `resource` reads like `VirtualService bookinfo-test/reviews`, `field` is a dotted path
    such as `spec.http[0].route[1].weight`.
    """

    code: str
    severity: str  # "Error" | "Warning" | "Info"
    resource: str
    message: str
    field: str = ""
    fix: str = ""

    def __str__(self) -> str:
        where = f" at {self.field}" if self.field else ""
        text = f"{self.severity} [{self.code}] ({self.resource}{where}) {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class LabError(Exception):
    """Base class for every error lablib raises on purpose."""


@dataclass
class ConfigError(LabError):
    """Configuration was refused before it reached any proxy; the mesh kept its last good config."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [str(d) for d in self.diagnostics if d.severity == "Error"]
        head = "configuration refused; the mesh keeps serving its last good config"
        return head + ":\n" + "\n".join(lines)


class ProxyRejectedError(LabError):
    """Envoy refused (NACKed) a pushed configuration; proxies keep the previous one."""


class NotFoundError(LabError):
    """A named resource does not exist."""


class BackendError(LabError):
    """The backend cannot do what was asked (mesh not running, cluster unreachable, ...)."""
