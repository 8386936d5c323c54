"""What kubectl and istioctl share as command lines: a table of verbs, each with its flags and
usage, dispatched as cobra does (global flags anywhere, `--help`, unknown verbs refused)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .flags import Flag, Parsed, parse, split_command
from .session import on_cluster, passthrough, run

__all__ = ["Command", "Tool", "err", "out"]


def out(text: str) -> None:
    """Write to stdout at once (a notebook's `!kubectl` shows it in order with stderr)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def err(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass
class Command:
    """One verb: what runs it, the flags it takes besides the global ones, its usage line."""

    run: Callable[[Parsed], int]
    flags: list[Flag]
    usage: str


@dataclass
class Tool:
    """One shim: `kubectl` or `istioctl`, with the words its errors use."""

    name: str
    global_flags: list[Flag]
    commands: dict[str, Command]
    error_word: str  # "error" (kubectl) or "Error" (istioctl)
    verb_hint: bool  # whether usage errors end "See 'TOOL VERB --help' for usage."
    unknown_hint: str = ""  # the line after `unknown command "x"`, if the tool prints one
    aliases: dict[str, str] = field(default_factory=dict)

    def help_text(self) -> str:
        lines = [f"{self.name} (lablib shim): the commands the Istio tasks use, run against "
                 f"the local mesh.", "", "Commands:"]
        lines += [f"  {c.usage}" for c in self.commands.values()]
        lines += ["", f"On LAB_BACKEND=kubernetes this is the real {self.name}. See "
                      f"docs/shims.md."]
        return "\n".join(lines) + "\n"

    def _hint(self, verb: str | None) -> str:
        if not self.verb_hint:
            return ""
        return f"See '{self.name} {verb} --help' for usage." if verb else \
            f"See '{self.name} --help' for usage."

    def main(self, argv: Sequence[str] | None = None) -> int:
        """`TOOL ARGS...` on the local mesh (the real tool on the kubernetes backend)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if on_cluster():
            return passthrough(self.name, argv)
        verb, rest = split_command(argv, self.global_flags)
        if verb is None:
            def bare() -> int:
                parse(rest, self.global_flags)  # `kubectl -n` alone is refused, as pflag does
                out(self.help_text())
                return 0

            return run(bare, self._hint(None), self.error_word)
        command = self.commands.get(self.aliases.get(verb, verb))
        if command is None:
            err(f'{self.error_word}: unknown command "{verb}" for "{self.name}"'
                + (f"\n{self.unknown_hint}" if self.unknown_hint else ""))
            return 1

        def body() -> int:
            parsed = parse(rest, [*self.global_flags, *command.flags])
            if parsed.get("help"):
                out(f"Usage (lablib shim):\n  {command.usage}\n")
                return 0
            return command.run(parsed)

        return run(body, self._hint(verb), self.error_word)
