"""Command lines parsed as kubectl and istioctl parse them (spf13/pflag's rules).

Flags may come before, between or after the arguments; `-n ns`, `-nns`, `-n=ns`,
`--namespace ns` and `--namespace=ns` are one flag; `-it` is `-i -t`; `-owide` is `-o wide`;
everything after `--` is left alone (the command of `kubectl exec`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Flag", "Parsed", "UsageError", "parse", "split_command"]


class UsageError(Exception):
    """A command line the real tool would refuse; the message is the tool's own words.
    `hint` says whether the tool follows it with "See 'kubectl get --help' for usage."."""

    def __init__(self, message: str, hint: bool = True):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Flag:
    """One flag: `kind` is "bool", "str" or "list" (repeatable); `optional` is the value a
    str flag takes when given bare (`--cascade` means `--cascade=background`)."""

    name: str
    short: str = ""
    kind: str = "str"
    optional: str | None = None


@dataclass
class Parsed:
    args: list[str]
    values: dict[str, Any]
    command: list[str] | None = None  # what followed `--`
    given: set[str] = field(default_factory=set)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def _truth(name: str, text: str) -> bool:
    if text.lower() in ("true", "t", "1"):
        return True
    if text.lower() in ("false", "f", "0"):
        return False
    raise UsageError(f'invalid argument "{text}" for "--{name}" flag: strconv.ParseBool: '
                     f'parsing "{text}": invalid syntax')


def _set(parsed: Parsed, flag: Flag, value: str) -> None:
    parsed.given.add(flag.name)
    if flag.kind == "bool":
        parsed.values[flag.name] = _truth(flag.name, value)
    elif flag.kind == "list":
        parsed.values.setdefault(flag.name, []).append(value)
    else:
        parsed.values[flag.name] = value


def parse(argv: Sequence[str], flags: Iterable[Flag]) -> Parsed:
    """Split `argv` into arguments and flag values; UsageError for what pflag refuses."""
    flags = list(flags)
    by_long = {f.name: f for f in flags}
    by_short = {f.short: f for f in flags if f.short}
    parsed = Parsed([], {f.name: [] if f.kind == "list" else (False if f.kind == "bool"
                                                               else None) for f in flags})
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            parsed.command = list(argv[i:])
            break
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            flag = by_long.get(name)
            if flag is None:
                raise UsageError(f"unknown flag: --{name}")
            if eq:
                _set(parsed, flag, value)
            elif flag.kind == "bool":
                _set(parsed, flag, "true")
            elif flag.optional is not None:
                _set(parsed, flag, flag.optional)
            elif i < len(argv):
                _set(parsed, flag, argv[i])
                i += 1
            else:
                raise UsageError(f"flag needs an argument: --{name}")
        elif token.startswith("-") and token != "-":
            letters = token[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                flag = by_short.get(letter)
                if flag is None:
                    raise UsageError(f"unknown shorthand flag: '{letter}' in {token}")
                if flag.kind == "bool":
                    if letters.startswith("="):
                        _set(parsed, flag, letters[1:])
                        letters = ""
                    else:
                        _set(parsed, flag, "true")
                    continue
                if letters:
                    _set(parsed, flag, letters[1:] if letters.startswith("=") else letters)
                elif i < len(argv):
                    _set(parsed, flag, argv[i])
                    i += 1
                else:
                    raise UsageError(f"flag needs an argument: '{letter}' in {token}")
                letters = ""
        else:
            parsed.args.append(token)
    return parsed


def split_command(argv: Sequence[str], global_flags: Iterable[Flag]) -> tuple[str | None,
                                                                                list[str]]:
    """The subcommand (the first argument that is no flag or flag value) and the rest."""
    valued = {f"--{f.name}" for f in global_flags if f.kind != "bool" and f.optional is None}
    valued |= {f"-{f.short}" for f in global_flags if f.short and f.kind != "bool"}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            return token, [*argv[:i], *argv[i + 1:]]
        i += 2 if token in valued else 1
    return None, list(argv)
