"""Read manifests from files, folders, YAML text or dicts, as `kubectl apply -f` would.

`load` returns Resources with their namespace settled (explicit `namespace=` argument,
else metadata.namespace, else "default"; "" for cluster-scoped kinds) and checked against
the schema, or raises ConfigError naming the file, document, field and YAML line of every
problem. Nothing is returned unless everything loaded, so an apply is all or nothing.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from ..errors import ConfigError, Diagnostic
from .model import CLUSTER_SCOPED_KINDS, Resource
from .schema import NOT_SERVED_CODE, check_kind, field_path, item_path, validate

__all__ = ["KIT_ROOT", "Source", "load", "load_one"]

KIT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `lablib` and `samples`

Source: TypeAlias = "str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any]"

READ_ERROR = "LAB0100"
YAML_ERROR = "LAB0103"
SHAPE_ERROR = "LAB0104"
NAMESPACE_ERROR = "LAB0105"
_YAML_SUFFIXES = (".yaml", ".yml")
# go-yaml's defence against "billion laughs", which kubectl inherits: past 1000 nodes, at
# most 99% of a document may come from alias expansion (10% past 4 million nodes).
_ALIAS_FREE_NODES = 1000
_ALIAS_RATIO_LOW, _ALIAS_RATIO_HIGH = 400_000, 4_000_000
# libyaml's loader is ~10x faster and yields the same nodes, marks and errors.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Document:
    """One YAML document: its data, where it came from and the line of each field path."""

    def __init__(self, label: str, data: Any, lines: dict[str, int]) -> None:
        self.label = label
        self.data = data
        self.lines = lines

    def line(self, path: str) -> int | None:
        """Line of `path`, or of its nearest ancestor that appears in the text."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)


_LAST_SEGMENT = re.compile(r'(\.[^.\[]+|\[\d+\]|\["[^"]*"\])$')


def _parent(path: str) -> str:
    match = _LAST_SEGMENT.search(path)
    return path[: match.start()] if match else ""


def _line_map(node: yaml.Node, path: str, out: dict[str, int], stack: set[int]) -> None:
    """Record the 1-based line of every field path under `node` (keys win over values)."""
    if id(node) in stack:  # a recursive alias; its lines are already recorded
        return
    out.setdefault(path, node.start_mark.line + 1)
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = field_path(path, key)
            out.setdefault(sub, key_node.start_mark.line + 1)
            _line_map(value_node, sub, out, stack)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, item_path(path, index), out, stack)
    stack.discard(id(node))


def _parse_text(text: str, origin: str, problems: list[Diagnostic]) -> Iterator[_Document]:
    """Each non-empty document of a YAML stream; a syntax error stops the stream."""
    loader = _SafeLoader(text)
    index = 0
    inside = False  # whether the parser has entered document `index`
    try:
        while True:
            inside = False
            if not loader.check_node():
                break
            index += 1
            inside = True
            node = loader.get_node()
            aliasing = _excessive_aliasing(node)
            if node is not None and aliasing:
                problems.append(Diagnostic(
                    YAML_ERROR, "Error", f"{origin}, document {index}",
                    f"invalid YAML at line {node.start_mark.line + 1}: too many alias "
                    f"expansions ({aliasing}); the document contains excessive aliasing", "",
                    "write the values out, or use fewer nested aliases (*name)"))
                continue
            for key, line in _duplicate_keys(node):
                problems.append(Diagnostic(
                    YAML_ERROR, "Error", f"{origin}, document {index}",
                    f'invalid YAML at line {line}: key "{key}" is already set in this map '
                    "(the later one would silently replace the earlier)", "",
                    f'keep one "{key}:" and merge what the two held'))
            data = loader.construct_document(node)
            if data is None:
                continue
            lines: dict[str, int] = {}
            if node is not None:
                _line_map(node, "", lines, set())
            yield _Document(f"{origin}, document {index}", data, lines)
    except yaml.YAMLError as exc:
        failed = index if inside else index + 1
        problems.append(_yaml_diagnostic(exc, f"{origin}, document {failed}", text))
    finally:
        loader.dispose()


def _allowed_alias_ratio(nodes: int) -> float:
    if nodes <= _ALIAS_RATIO_LOW:
        return 0.99
    if nodes >= _ALIAS_RATIO_HIGH:
        return 0.10
    return 0.99 - 0.89 * (nodes - _ALIAS_RATIO_LOW) / (_ALIAS_RATIO_HIGH - _ALIAS_RATIO_LOW)


def _excessive_aliasing(root: yaml.Node | None) -> str:
    """Why the document's aliases expand too far ("" if they do not), counted once per node.

    Every later step (line map, duplicate keys, validation, JSON) walks the expanded tree,
    so a few hundred bytes of nested aliases would otherwise take minutes and gigabytes."""
    if root is None:
        return ""
    expanded: dict[int, int] = {}  # node id -> nodes under it once aliases are expanded
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            expanded[key] = 1 + sum(expanded[id(child)] for child in children)
            continue
        if key in expanded:
            continue
        if key in on_path:
            return "an alias refers to a node that contains it"
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)
    total, distinct = expanded[id(root)], len(expanded)
    if total > _ALIAS_FREE_NODES and (total - distinct) / total > _allowed_alias_ratio(total):
        return f"{distinct} nodes expand to {total}"
    return ""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _duplicate_keys(node: yaml.Node | None) -> Iterator[tuple[str, int]]:
    """(key, line) of every key that appears twice in one mapping, as kubectl refuses."""
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        yield key.value, key.start_mark.line + 1
                    seen.add(key.value)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _yaml_diagnostic(exc: yaml.YAMLError, label: str, text: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None)
    lines = text.splitlines()
    bad_line = lines[mark.line] if mark and mark.line < len(lines) else ""
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = str(getattr(exc, "problem", "") or exc)
    context = getattr(exc, "context", None)
    reason = f"{context}: {problem}" if context else problem
    if "\t" in bad_line:
        fix = "indent with spaces; YAML does not allow tabs"
    elif mark:
        fix = f"check the indentation and the `key: value` syntax on line {mark.line + 1}"
    else:
        fix = "check the YAML syntax"
    return Diagnostic(YAML_ERROR, "Error", label, f"invalid YAML{where}: {reason}", "", fix)


def _find_path(text: str | os.PathLike[str], base_dir: Path | None) -> Path | None:
    """An existing file or folder: as given (from base_dir or cwd), else from the kit root."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for root in (base_dir or Path.cwd(), KIT_ROOT):
        candidate = root / path
        if candidate.exists():
            return candidate
    return None


def _looks_like_path(text: str) -> bool:
    return text.endswith(_YAML_SUFFIXES) or ("/" in text and ": " not in text)


def _documents(source: Any, base_dir: Path | None, problems: list[Diagnostic],
               read_files: bool = True) -> Iterator[_Document]:
    if isinstance(source, Mapping):
        yield _Document("<dict>", copy.deepcopy(dict(source)), {})
    elif isinstance(source, Sequence) and not isinstance(source, str):
        for item in source:
            yield from _documents(item, base_dir, problems, read_files)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        # Empty text is no path: Path("") is the current folder, whose files are not input.
        if isinstance(source, str) and ("\n" in text or not text.strip() or not read_files):
            yield from _parse_text(text, "<string>", problems)
            return
        path = _find_path(text, base_dir)
        if path is None:
            if isinstance(source, str) and not _looks_like_path(text):
                yield from _parse_text(text, "<string>", problems)
            else:
                roots = dict.fromkeys(str(r) for r in (base_dir or Path.cwd(), KIT_ROOT))
                problems.append(Diagnostic(
                    READ_ERROR, "Error", text, f'no such file or folder: "{text}"', "",
                    f"check the path; relative paths are looked up from {' and '.join(roots)}",
                ))
            return
        files = (sorted(p for p in path.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())
                 if path.is_dir() else [path])
        for file in files:
            label = str(Path(text) / file.name) if path.is_dir() else text
            try:
                content = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Diagnostic(READ_ERROR, "Error", label, f"cannot read it: {exc}",
                                           "", "check that it is a readable UTF-8 text file"))
                continue
            yield from _parse_text(content, label, problems)
    else:
        problems.append(Diagnostic(
            READ_ERROR, "Error", repr(source)[:60],
            f"cannot load manifests from a {type(source).__name__}", "",
            "pass a file or folder path, YAML text, a dict, or a list of those",
        ))


def _missing(doc: _Document, path: str, ref: str, what: str) -> Diagnostic:
    line = doc.line(path)
    at = f" ({doc.label}, line {line})" if line else f" ({doc.label})"
    return Diagnostic(SHAPE_ERROR, "Error", ref, f"{what}{at}", path,
                      "every manifest needs apiVersion, kind and metadata.name")


def _resources(doc: _Document, body: Any, prefix: str, namespace: str | None,
               problems: list[Diagnostic], check_fields: bool = True) -> Iterator[Resource]:
    """The Resources of one document body (several for `kind: List`)."""
    label = f"{doc.label}, {prefix}" if prefix else doc.label

    def full(path: str) -> str:
        return f"{prefix}.{path}" if prefix and path else (prefix or path)

    if not isinstance(body, dict):
        problems.append(_missing(doc, prefix, label,
                                 f"a manifest must be a mapping, got {type(body).__name__}"))
        return
    kind = body.get("kind")
    if kind == "List":
        for index, item in enumerate(body.get("items") or []):
            yield from _resources(doc, item, item_path(full("items"), index), namespace, problems,
                                  check_fields)
        return
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    shape_ok = True
    for path, value in (("apiVersion", body.get("apiVersion")), ("kind", kind),
                        ("metadata.name", name)):
        if not isinstance(value, str) or not value:
            what = (f'missing required field "{path}"' if value in (None, "")
                    else f'"{path}" must be a string, got {value!r}')
            problems.append(_missing(doc, full(path), label, what))
            shape_ok = False
    if not isinstance(kind, str) or not kind or not isinstance(body.get("apiVersion"), str):
        return
    unknown = check_kind(kind, str(body["apiVersion"]), f"{kind} {name or '<unnamed>'}")
    # A kind of Istio or the Gateway API the local mesh does not serve still loads: a cluster
    # serves it, and the local mesh refuses it when it is applied there.
    if unknown and unknown.code != NOT_SERVED_CODE:
        problems.append(_located(unknown, doc, full(unknown.field)))
        return
    if not shape_ok:
        # Still report the structure: a missing name is often an indentation slip that
        # also pushed other fields to the wrong level.
        unnamed = Resource(kind, "<unnamed>", "", body, label)
        problems.extend(_located(d, doc, full(d.field)) for d in validate(unnamed))
        return
    assert isinstance(name, str) and isinstance(metadata, dict)
    resource = _placed(kind, name, body, metadata, namespace, label, doc, full, problems)
    if resource is None:
        return
    if check_fields and not unknown:
        problems.extend(_located(d, doc, full(d.field)) for d in validate(resource))
    yield resource


def _placed(kind: str, name: str, body: dict[str, Any], metadata: dict[str, Any],
            namespace: str | None, label: str, doc: _Document, full: Callable[[str], str],
            problems: list[Diagnostic]) -> Resource | None:
    """The Resource in its namespace, as `kubectl apply [-n namespace]` would place it."""
    if kind in CLUSTER_SCOPED_KINDS:
        return Resource(kind, name, "", body, label)
    declared = metadata.get("namespace")
    if namespace and declared and declared != namespace:
        problems.append(_located(Diagnostic(
            NAMESPACE_ERROR, "Error", f"{kind} {declared}/{name}",
            f'the namespace from the provided object "{declared}" does not match the namespace '
            f'"{namespace}". You must pass \'--namespace={declared}\' to perform this operation.',
            "metadata.namespace",
            f'apply it with namespace="{declared}", or remove metadata.namespace from it',
        ), doc, full("metadata.namespace")))
        return None
    if namespace or declared:
        chosen = str(namespace or declared)
        return Resource(kind, name, chosen, body, label).in_namespace(chosen)
    # Left out of the body on purpose: a later `kubectl apply -n X` of it must still work.
    return Resource(kind, name, "default", body, label)


def _located(diagnostic: Diagnostic, doc: _Document, path: str) -> Diagnostic:
    """The diagnostic with "(file, document N, line L)" appended to its message."""
    line = doc.line(path)
    where = f"{doc.label}, line {line}" if line else doc.label
    return replace(diagnostic, message=f"{diagnostic.message} ({where})")


def load(source: Source, namespace: str | None = None,
         base_dir: str | os.PathLike[str] | None = None,
         check_fields: bool = True, verb: str = "", read_files: bool = True) -> list[Resource]:
    """Resources from a path, folder, YAML text, dict, or a list of those; ConfigError if bad.

    Relative paths are tried from `base_dir` (default: the current folder), then from the
    kit folder, so `samples/bookinfo/platform/kube/bookinfo.yaml` works from `labs/`.
    `check_fields=False` checks only what names a resource (kind, name, namespace), as
    `kubectl delete -f` needs no valid spec. With a `verb` ("apply", "delete"), input that
    holds no manifest is refused as kubectl refuses it. `read_files=False` reads a string
    as YAML text only, never as a path (meshd is sent text, and resolves no path).
    """
    problems: list[Diagnostic] = []
    resources: list[Resource] = []
    base = Path(base_dir) if base_dir is not None else None
    for doc in _documents(source, base, problems, read_files):
        resources.extend(_resources(doc, doc.data, "", namespace, problems, check_fields))
    if verb and not resources and not problems:
        problems.append(Diagnostic(
            SHAPE_ERROR, "Error", "<input>", f"no objects passed to {verb}", "",
            "the input holds no manifest (only comments, or a List with no items): check "
            "the file or text you passed"))
    if any(p.severity == "Error" for p in problems):
        raise ConfigError(problems)
    return resources


def load_one(source: Source, namespace: str | None = None,
             base_dir: str | os.PathLike[str] | None = None) -> Resource:
    """The single Resource in `source`; ConfigError if there are none or several."""
    resources = load(source, namespace, base_dir)
    if len(resources) != 1:
        names = ", ".join(r.ref for r in resources) or "none"
        raise ConfigError([Diagnostic(
            SHAPE_ERROR, "Error", "<input>",
            f"expected exactly one manifest, found {len(resources)} ({names})", "",
            "pass a single manifest, or use load() for several",
        )])
    return resources[0]
