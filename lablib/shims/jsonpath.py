"""kubectl's JSONPath dialect: `-o jsonpath=TEMPLATE` and `custom-columns`.

    render('{.spec.ports[?(@.name=="http2")].port}', service)          -> "80"
    render('{range .items[*]}{.metadata.name}{"\\n"}{end}', pod_list)  -> "a\\nb\\n"

A template is text with `{...}` actions: a path (`.a.b`, `..name`, `[0]`, `[-1]`, `[1:3]`,
`[*]`, `.*`, `['key']`, `[?(@.x=="y")]`, `[?(@.x)]`), a string literal (`{"\\n"}`), or
`{range PATH}...{end}`. As in kubectl, a missing key prints nothing, several results of one
action are joined by a space, and maps and lists print as compact JSON.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JSONPathError", "relaxed", "render", "text_of", "values"]


class JSONPathError(ValueError):
    """The template does not parse; the message reads like kubectl's."""


# --- the syntax tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Wildcard:
    pass


@dataclass(frozen=True)
class Recursive:
    pass


@dataclass(frozen=True)
class Index:
    start: int | None
    end: int | None = None
    step: int | None = None
    is_slice: bool = False


@dataclass(frozen=True)
class Union:
    parts: tuple[Field | Index, ...]


@dataclass(frozen=True)
class Filter:
    left: tuple[Any, ...]  # a path relative to each element
    op: str  # "exists", "==", "!=", "<", "<=", ">", ">="
    right: Any = None  # a literal, or a Path


@dataclass(frozen=True)
class Path:
    steps: tuple[Any, ...]
    from_root: bool = False  # `$...`: from the document, even inside range


@dataclass(frozen=True)
class Text:
    text: str


@dataclass
class Range:
    path: Path
    body: list[Any] = field(default_factory=list)


# --- parsing ------------------------------------------------------------------------------------

_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
                ">": operator.gt, ">=": operator.ge}
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def _actions(template: str) -> Iterator[tuple[str, str]]:
    """("text", s) and ("action", s) pieces; braces inside quoted strings do not count."""
    i, n = 0, len(template)
    while i < n:
        start = template.find("{", i)
        if start < 0:
            yield "text", template[i:]
            return
        if start > i:
            yield "text", template[i:start]
        j, quote = start + 1, ""
        while j < n:
            ch = template[j]
            if quote:
                if ch == "\\":
                    j += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "}":
                break
            j += 1
        if j >= n:
            raise JSONPathError(f"error parsing jsonpath {template}, unclosed action")
        yield "action", template[start + 1:j]
        i = j + 1


def _unquote(text: str, template: str) -> str:
    """A quoted string literal with kubectl's escapes (\\n, \\t, \\", \\\\)."""
    if len(text) < 2 or text[-1] != text[0]:
        raise JSONPathError(f"error parsing jsonpath {template}, unclosed quote: {text}")
    body, out, i = text[1:-1], [], 0
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], "\\" + body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _closing(text: str, i: int, opening: str, closing: str, template: str) -> int:
    """Index of the bracket closing the one at `i`, skipping quoted strings."""
    depth, quote = 0, ""
    for j in range(i, len(text)):
        ch = text[j]
        if quote:
            if ch == quote and text[j - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return j
    raise JSONPathError(f"error parsing jsonpath {template}, unclosed array expect {closing}")


def _identifier(text: str, i: int) -> tuple[str, int]:
    """A field name from `i`: up to `.`, `[`, or a space; `\\.` escapes a dot."""
    out = []
    while i < len(text) and text[i] not in ".[] ()":
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out), i


def _int(text: str, template: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise JSONPathError(f"error parsing jsonpath {template}, invalid array index {text}"
                            ) from None


def _bracket(inner: str, template: str) -> Any:
    inner = inner.strip()
    if inner == "*":
        return Wildcard()
    if inner.startswith("?"):
        body = inner[1:].strip()
        if not (body.startswith("(") and body.endswith(")")):
            raise JSONPathError(f"error parsing jsonpath {template}, invalid filter {inner}")
        return _filter(body[1:-1].strip(), template)
    parts: list[Field | Index] = []
    for part in _split_commas(inner):
        part = part.strip()
        if part[:1] in "\"'":
            parts.append(Field(_unquote(part, template)))
        elif ":" in part:
            bounds = part.split(":")
            if len(bounds) > 3:
                raise JSONPathError(f"error parsing jsonpath {template}, invalid slice {part}")
            numbers = [_int(b, template) for b in bounds] + [None]
            parts.append(Index(numbers[0], numbers[1], numbers[2], True))
        else:
            parts.append(Index(_int(part, template)))
    if len(parts) == 1:
        return parts[0]
    return Union(tuple(parts))


def _split_commas(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _operand(text: str, template: str) -> Any:
    text = text.strip()
    if text[:1] in "\"'":
        return _unquote(text, template)
    if text.startswith("@") or text.startswith("$"):
        return _path(text, template)
    if _NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if text in ("true", "false"):
        return text == "true"
    raise JSONPathError(f"error parsing jsonpath {template}, unrecognized filter operand {text}")


def _filter(body: str, template: str) -> Filter:
    quote = ""
    for i, ch in enumerate(body):
        if quote:
            quote = "" if ch == quote else quote
            continue
        if ch in "\"'":
            quote = ch
            continue
        for op in _OPERATORS:
            if body.startswith(op, i):
                left = _path(body[:i].strip(), template)
                return Filter(left.steps, op, _operand(body[i + len(op):], template))
    return Filter(_path(body, template).steps, "exists")


def _path(text: str, template: str) -> Path:
    """`.a.b[0]`, `@.a`, `$.a`, `..a`, `a.b`: one path expression."""
    steps: list[Any] = []
    i, from_root = 0, False
    if text.startswith("$"):
        i, from_root = 1, True
    elif text.startswith("@"):
        i = 1
    while i < len(text):
        ch = text[i]
        if text.startswith("..", i):
            steps.append(Recursive())
            i += 2
            if i < len(text) and text[i] == "[":
                continue
            name, i = _identifier(text, i)
            steps.append(Wildcard() if name == "*" else Field(name))
        elif ch == ".":
            name, i = _identifier(text, i + 1)
            if name:
                steps.append(Wildcard() if name == "*" else Field(name))
        elif ch == "[":
            end = _closing(text, i, "[", "]", template)
            steps.append(_bracket(text[i + 1:end], template))
            i = end + 1
        elif ch == " ":
            raise JSONPathError(f"error parsing jsonpath {template}, unrecognized character in "
                                f"action: {text[i:]!r}")
        else:
            name, i = _identifier(text, i)
            if not name:
                raise JSONPathError(f"error parsing jsonpath {template}, unrecognized character "
                                    f"in action: {text[i]!r}")
            steps.append(Wildcard() if name == "*" else Field(name))
    return Path(tuple(steps), from_root)


def parse(template: str) -> list[Any]:
    """The template as a list of Text, Path and Range nodes."""
    root: list[Any] = []
    stack: list[list[Any]] = [root]
    for kind, piece in _actions(template):
        if kind == "text":
            stack[-1].append(Text(piece))
            continue
        action = piece.strip()
        if action == "end":
            if len(stack) == 1:
                raise JSONPathError(f"error parsing jsonpath {template}, not in range, nothing "
                                    f"to end")
            stack.pop()
        elif action.startswith("range ") or action == "range":
            node = Range(_path(action[len("range"):].strip(), template))
            stack[-1].append(node)
            stack.append(node.body)
        elif action[:1] in "\"'":
            stack[-1].append(Text(_unquote(action, template)))
        elif action in ("", "@"):
            stack[-1].append(Path(()))
        else:
            stack[-1].append(_path(action, template))
    if len(stack) > 1:
        raise JSONPathError(f"error parsing jsonpath {template}, unclosed range")
    return root


# --- evaluation ---------------------------------------------------------------------------------


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return list(value)
    return []


def _recursive(values: list[Any]) -> list[Any]:
    """Every container at or below `values`, depth first (leaves are not containers)."""
    out: list[Any] = []
    for value in values:
        children = _children(value)
        if children:
            out.append(value)
            out.extend(_recursive(children))
    return out


def _index(value: list[Any], step: Index) -> list[Any]:
    n = len(value)
    if not step.is_slice:
        if step.start is None:
            return []
        i = step.start + n if step.start < 0 else step.start
        return [value[i]] if 0 <= i < n else []
    return value[slice(step.start, step.end, step.step)]


def _compare(left: Any, op: str, right: Any) -> bool:
    """Numbers compare with numbers and strings with strings; mixed kinds are never equal."""
    numeric = (int, float)
    same_kind = (isinstance(left, bool) == isinstance(right, bool)
                 and isinstance(left, numeric) == isinstance(right, numeric))
    if not same_kind:
        return op == "!="
    try:
        return bool(_COMPARISONS[op](left, right))
    except TypeError:
        return False


def _step(values: list[Any], step: Any, root: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(step, Recursive):
        return _recursive(values)
    for value in values:
        if isinstance(step, Field):
            if isinstance(value, dict) and step.name in value:
                out.append(value[step.name])
        elif isinstance(step, Wildcard):
            out.extend(_children(value))
        elif isinstance(step, Index):
            if isinstance(value, list):
                out.extend(_index(value, step))
        elif isinstance(step, Union):
            for part in step.parts:
                out.extend(_step([value], part, root))
        elif isinstance(step, Filter) and isinstance(value, list):
            out.extend(item for item in value if _matches(item, step, root))
    return out


def _matches(item: Any, step: Filter, root: Any) -> bool:
    lefts = _walk([item], step.left, root)
    if step.op == "exists":
        return bool(lefts)
    rights = (_evaluate(step.right, item, root) if isinstance(step.right, Path)
              else [step.right])
    if len(lefts) != 1 or len(rights) != 1:
        return False
    return bool(_compare(lefts[0], step.op, rights[0]))


def _walk(values: list[Any], steps: tuple[Any, ...], root: Any) -> list[Any]:
    for step in steps:
        values = _step(values, step, root)
    return values


def _evaluate(path: Path, current: Any, root: Any) -> list[Any]:
    return _walk([root if path.from_root else current], path.steps, root)


def text_of(value: Any) -> str:
    """One result as kubectl prints it: strings raw, maps and lists as compact JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if value is None:
        return "<nil>"
    return str(value)


def _execute(nodes: list[Any], current: Any, root: Any, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Range):
            for item in _evaluate(node.path, current, root):
                _execute(node.body, item, root, out)
        else:
            out.append(" ".join(text_of(v) for v in _evaluate(node, current, root)))


def render(template: str, data: Any) -> str:
    """The text `kubectl -o jsonpath=TEMPLATE` prints for `data` (no newline added)."""
    out: list[str] = []
    _execute(parse(template), data, data, out)
    return "".join(out)


def values(expression: str, data: Any) -> list[Any]:
    """The values one path expression (`{.a.b}` or `.a.b`) selects from `data`."""
    nodes = parse(relaxed(expression))
    found: list[Any] = []
    for node in nodes:
        if isinstance(node, Path):
            found.extend(_evaluate(node, data, data))
    return found


def relaxed(expression: str) -> str:
    """`metadata.name`, `.metadata.name` and `{.metadata.name}` all as `{.metadata.name}`,
    as custom-columns accepts them."""
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text and not text.startswith((".", "$", "@", "[")):
        text = "." + text
    return "{" + text + "}"
