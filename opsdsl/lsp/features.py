"""What the language server answers, as plain functions of a document's text: diagnostics
(from the lint engine), completion, hover, definitions and references, rename, code
actions and formatting. `opsdsl.lsp.server` only wires them to the protocol; tests and the
bench call them directly.

Lines and columns here are 0-based code points; `Position`s handed in and out are
converted by the server when the client counts UTF-16 units.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types as lsp

from opsdsl.errors import Diagnostic, Severity
from opsdsl.lang.config import Config
from opsdsl.lsp.structure import Cursor, Outline, Range, Symbol, block_keys, cursor_at, outline, test_outline

SOURCE = "opsdsl"
TEST_SUFFIXES = (".test.yaml", ".test.yml", ".test.ops")


@dataclass(frozen=True)
class Scope:
    """What lint would see beside the file: the configuration and the policy packs."""

    config: Config = field(default_factory=Config)
    policies: tuple = ()


def is_ops(path: Path) -> bool:
    return path.name.endswith(".ops")


def is_test(path: Path) -> bool:
    return path.name.endswith(TEST_SUFFIXES)


# ---------------------------------------------------------------- diagnostics


def lint_diagnostics(path: Path, text: str, scope: Scope) -> list[Diagnostic]:
    """The file as `opsdsl lint` reports it: the same engine, stages, suppressions and
    configuration, on the editor's text instead of the disk's."""
    from opsdsl.lang.loader import MAX_FILE_BYTES
    from opsdsl.lint.engine import lint_one

    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        from opsdsl.errors import Span
        from opsdsl.lang.rules import rule

        size = len(text.encode("utf-8", "surrogatepass")) / 1048576
        message = f"file is {size:.1f} MiB; packs are limited to {MAX_FILE_BYTES // 1048576} MiB"
        return [Diagnostic("OPS001", rule("OPS001").severity, message, Span(path.name, 1, 1), "split it")]
    # What a file on disk cannot hold, an editor's buffer can: a lone surrogate (from a JSON
    # escape) or a NUL. Each becomes U+FFFD, one character for one, so columns stay right.
    if _has_surrogate(text):
        text = re.sub("[\ud800-\udfff]", "\ufffd", text)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    report, _ = lint_one(path, scope.policies, scope.config, text=text)
    return sorted(report.diagnostics, key=Diagnostic.sort_key)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def to_lsp(d: Diagnostic) -> lsp.Diagnostic:
    """Span (1-based, end exclusive) → LSP range (0-based, end exclusive)."""
    start = lsp.Position(max(d.span.line - 1, 0), max(d.span.col - 1, 0))
    if d.span.end_line and (d.span.end_line, d.span.end_col) > (d.span.line, d.span.col):
        end = lsp.Position(d.span.end_line - 1, max(d.span.end_col - 1, 0))
    else:
        end = lsp.Position(start.line, start.character + 1)
    from opsdsl.lang.rules import RULES

    rule = RULES.get(d.code)
    return lsp.Diagnostic(
        range=lsp.Range(start, end),
        message=d.message + (f"\nhint: {d.hint}" if d.hint else ""),
        severity=lsp.DiagnosticSeverity.Error if d.severity is Severity.ERROR else lsp.DiagnosticSeverity.Warning,
        code=d.code,
        source=SOURCE,
        data={"hint": d.hint, "rule": rule.name if rule else None},
    )


# ---------------------------------------------------------------- the schema


@functools.cache
def schema(kind: str = "pack") -> dict:
    from opsdsl.resources import read_text

    return json.loads(read_text(f"schemas/{kind}.schema.json"))


def _resolve(node: dict, root: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        node = merged
    return node


@functools.cache
def expression_keys() -> frozenset[str]:
    """Keys whose whole value is an expression (their schema is `#/$defs/expression`)."""
    found: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, dict):
            for key, value in (node.get("properties") or {}).items():
                if isinstance(value, dict) and value.get("$ref") == "#/$defs/expression":
                    found.add(key)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema("pack"))
    return frozenset(found)


def _kind_of(text: str) -> str:
    match = re.search(r"^kind:\s*['\"]?(\w+)", text, re.MULTILINE)
    return match.group(1) if match else "Pack"


def schema_at(path: tuple, text: str, test: bool = False) -> dict | None:
    """The (resolved) schema of the mapping at `path` in this document."""
    root = schema("test" if test else "pack")
    node = (
        _resolve(root["$defs"]["PolicyPack" if _kind_of(text) == "PolicyPack" else "Pack"], root) if not test else root
    )
    for i, part in enumerate(path):
        node = _resolve(node, root)
        if isinstance(part, int):
            node = node.get("items") if isinstance(node.get("items"), dict) else None
        elif part == "with" and i > 0 and _action_for(path[:i], text):
            node = root["$defs"].get(f"with.{_action_for(path[:i], text)}")
        elif part in (node.get("properties") or {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
        if node is None:
            return None
    return _resolve(node, root)


def _action_for(path: tuple, text: str) -> str | None:
    """The `action:` of the step (or compensation) at `path`, read from the lines."""
    data = _safe_data(text)
    node = data
    for part in path:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        else:
            return _action_from_lines(path, text)
    action = node.get("action") if isinstance(node, dict) else None
    return action if isinstance(action, str) else None


def _action_from_lines(path: tuple, text: str) -> str | None:
    lines = text.splitlines()
    for number, key, holder in block_keys(text):
        if key == "action" and holder == path:
            match = re.search(r"action:\s*([\w.]+)", lines[number])
            return match.group(1) if match else None
    return None


@functools.lru_cache(maxsize=4)
def _safe_data(text: str) -> object:
    import yaml

    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:
        return None


# ---------------------------------------------------------------- completion


def _actions() -> list[str]:
    from opsdsl.lang.actions import BUILTIN_ACTIONS
    from opsdsl.lang.plugins import plugin_names

    return [*BUILTIN_ACTIONS, *sorted(plugin_names())]


def _item(label: str, kind: lsp.CompletionItemKind, detail: str | None = None, doc: str | None = None, **kw):
    return lsp.CompletionItem(
        label=label,
        kind=kind,
        detail=detail,
        documentation=lsp.MarkupContent(lsp.MarkupKind.Markdown, doc) if doc else None,
        **kw,
    )


def _steps_of(data: object, playbook: str) -> list[dict]:
    try:
        steps = data["playbooks"][playbook]["steps"]
    except (KeyError, TypeError, IndexError):
        return []
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


def step_ancestors(data: object, playbook: str, index: int) -> list[str]:
    """The steps that have certainly finished before step `index` runs (what `steps.`
    may read): its `needs:` (or the previous step) and theirs, as lint counts them."""
    from opsdsl.lang.checks.context import ancestors

    steps = _steps_of(data, playbook)
    preds: dict[str, tuple[str, ...]] = {}
    for i, step in enumerate(steps):
        ident = str(step.get("id", f"#{i}"))
        needs = step.get("needs")
        if isinstance(needs, list):
            preds.setdefault(ident, tuple(str(n) for n in needs))
        else:
            preds.setdefault(ident, (str(steps[i - 1].get("id", f"#{i - 1}")),) if i else ())
    if index >= len(steps):
        # a step being typed at the end: after the last one
        last = str(steps[-1].get("id")) if steps else None
        return sorted(({last} | ancestors(preds, last)) if last else set())
    me = str(steps[index].get("id", f"#{index}"))
    return sorted(ancestors(preds, me))


def complete(path: Path, text: str, line: int, col: int, info: Outline | None) -> list[lsp.CompletionItem]:
    """Completions at (line, col) of a YAML pack or pack test; `info` is the outline of
    this text, or of the last version that parsed (names survive a half-typed line)."""
    if is_ops(path):
        return []
    cursor = cursor_at(text, line, col)
    current = text.splitlines()[line] if line < len(text.splitlines()) else ""
    before = current[:col]
    data = info.data if info else None
    expression = _expression_items(before, cursor, data, info)
    if expression is not None:
        return expression
    cursor = _in_flow(cursor, before) or _new_item(cursor, text, is_test(path))
    if is_test(path):
        return _key_items(cursor, text, test=True) if cursor.key is None else []
    if cursor.key is None:
        return _key_items(cursor, text)
    return _value_items(cursor, text, info)


def _in_flow(cursor: Cursor, before: str) -> Cursor | None:
    """`with: {playbook: |`: the key typed inside a flow mapping on the cursor's line."""
    if before.count("{") <= before.count("}"):
        return None
    outer = (*cursor.path, cursor.key) if cursor.key else cursor.path
    match = re.search(r"[{,]\s*([\w.-]+):\s*([\w.$-]*)$", before)
    if match is not None:
        return Cursor(outer, match.group(1), match.group(2))
    match = re.search(r"[{,]\s*([\w-]*)$", before)
    if match is not None:
        return Cursor(outer, None, match.group(1), flow_keys=tuple(re.findall(r"[{,]\s*([\w.-]+):", before)))
    return None


def _new_item(cursor: Cursor, text: str, test: bool) -> Cursor:
    """`- |` in a list of mappings (steps, policies, cases) starts a mapping: keys are typed."""
    if cursor.in_list and cursor.key is not None and cursor.item is not None:
        node = schema_at((*cursor.path, cursor.key, cursor.item), text, test=test)
        if node and node.get("properties"):
            return Cursor((*cursor.path, cursor.key, cursor.item), None, cursor.prefix)
    return cursor


def _playbook_and_step(path: tuple) -> tuple[str | None, int | None]:
    if len(path) >= 2 and path[0] == "playbooks":
        playbook = str(path[1])
        if len(path) >= 4 and path[2] == "steps" and isinstance(path[3], int):
            return playbook, path[3]
        return playbook, None
    return None, None


def _expression_items(before: str, cursor: Cursor, data: object, info: Outline | None) -> list | None:
    field = re.search(r"(?<![\w.])steps\.[A-Za-z_][A-Za-z0-9_-]*\.([A-Za-z_]*)$", before)
    if field is not None:
        # what lint knows of a step's result (lang.checks.context); `outputs` is free-form
        from opsdsl.lang.checks.context import _STEP_RESULT

        return [
            _item(name, lsp.CompletionItemKind.Field, spec.type) for name, spec in (_STEP_RESULT.fields or {}).items()
        ]
    match = re.search(r"(?<![\w.])(steps|params|inputs)\.([A-Za-z0-9_-]*)$", before)
    if match is None:
        return None
    root = match.group(1)
    location = (*cursor.path, cursor.key) if cursor.key else cursor.path
    playbook, index = _playbook_and_step(location)
    kind = lsp.CompletionItemKind
    if root == "params":
        params = data.get("params") if isinstance(data, dict) else None
        names = list(params) if isinstance(params, dict) else (info.names("param") if info else [])
        return [_item(n, kind.Variable, _param_detail(params, n)) for n in names]
    if playbook is None:
        return []
    if root == "inputs":
        try:
            inputs = data["playbooks"][playbook]["inputs"]
        except (KeyError, TypeError):
            inputs = None
        names = list(inputs) if isinstance(inputs, dict) else (info.names("input", playbook) if info else [])
        return [_item(n, kind.Variable, "input") for n in names]
    if index is None:
        return []
    return [_item(n, kind.Reference, "step (finished before this one)") for n in step_ancestors(data, playbook, index)]


def _param_detail(params: object, name: str) -> str:
    spec = params.get(name) if isinstance(params, dict) else None
    if isinstance(spec, dict):
        out = f"param: {spec.get('type', '?')}"
        if "default" in spec:
            out += f" = {json.dumps(spec['default'])}" if not spec.get("secret") else " (secret)"
        return out
    return "param"


def _key_items(cursor: Cursor, text: str, test: bool = False) -> list[lsp.CompletionItem]:
    node = schema_at(cursor.path, text, test=test)
    if not node:
        return []
    present = set(cursor.flow_keys) if cursor.flow_keys is not None else _sibling_keys(text, cursor)
    out = []
    for key, spec in (node.get("properties") or {}).items():
        if key in present:
            continue
        spec = _resolve(spec, schema("test" if test else "pack"))
        out.append(
            _item(
                key,
                lsp.CompletionItemKind.Property,
                "required" if key in node.get("required", ()) else None,
                spec.get("description"),
                insert_text=f"{key}: ",
            )
        )
    return out


def _sibling_keys(text: str, cursor: Cursor) -> set[str]:
    """Keys already in the mapping the cursor is in (each is offered once)."""
    return {key for _, key, holder in block_keys(text) if holder == cursor.path}


def _value_items(cursor: Cursor, text: str, info: Outline | None) -> list[lsp.CompletionItem]:
    kind = lsp.CompletionItemKind
    key, path = cursor.key, cursor.path
    playbook, index = _playbook_and_step(path)
    if key == "action" and (path[-1:] == ("compensate",) or index is not None):
        from opsdsl.lang.actions import BUILTIN_ACTIONS

        return [
            _item(a, kind.Function, "built-in action" if a in BUILTIN_ACTIONS else "plugin action", action_doc(a))
            for a in _actions()
        ]
    if key == "needs" and playbook is not None:
        data = info.data if info else None
        me = (
            _steps_of(data, playbook)[index].get("id")
            if index is not None and index < len(_steps_of(data, playbook))
            else None
        )
        names = info.names("step", playbook) if info else []
        return [_item(n, kind.Reference, "step") for n in names if n != me]
    if (path[:1] == ("hooks",) and key == "run") or (key == "playbook" and path[-1:] == ("with",)):
        return [_item(n, kind.Module, "playbook") for n in (info.names("playbook") if info else [])]
    if path[:1] == ("hooks",) and key == "trigger":
        return [_item(n, kind.Event, "trigger") for n in (info.names("trigger") if info else [])]
    node = schema_at(path, text)
    spec = (node or {}).get("properties", {}).get(key) if node else None
    spec = _resolve(spec, schema("pack")) if spec else None
    if spec and "enum" in spec:
        return [_item(str(v), kind.EnumMember) for v in spec["enum"]]
    if spec and spec.get("type") == "boolean":
        return [_item("true", kind.Value), _item("false", kind.Value)]
    return []


# ---------------------------------------------------------------- hover


def action_doc(action: str) -> str:
    from opsdsl.lang.actions import ACTION_DEFAULTS, BUILTIN_ACTIONS, defaults

    spec = schema("pack")["$defs"].get(f"with.{action}")
    lines = [f"**{action}**" + (" (built-in action)" if action in BUILTIN_ACTIONS else " (plugin action)")]
    if spec and spec.get("description"):
        lines.append(spec["description"])
    d = defaults(action)
    if action in ACTION_DEFAULTS or action not in BUILTIN_ACTIONS:
        lines.append(
            f"Default `timeout`: {_duration(d['timeout'])}; default `idempotent`: `{str(d['idempotent']).lower()}`."
        )
    if spec:
        keys = ", ".join(f"`{k}`" for k in spec.get("properties", {}))
        lines.append(f"`with:` keys: {keys}")
    return "\n\n".join(lines)


def _duration(ms: int | None) -> str:
    if ms is None:
        return "none (no limit)"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"`{ms // size}{unit}`"
    return f"`{ms}ms`"


def function_doc(name: str) -> str | None:
    from opsdsl.lang.expr.functions import BUILTINS, KNOWN_FUNCTIONS

    builtin = BUILTINS.get(name)
    if builtin is None:
        if name in KNOWN_FUNCTIONS:
            return f"**{name}** (macro): see docs/expressions.md"
        return None

    def kinds(k: frozenset[str]) -> str:
        return "|".join(sorted(k))

    forms = []
    if builtin.is_global:
        forms.append(f"`{name}({', '.join(kinds(p) for p in builtin.params)}) → {kinds(builtin.result)}`")
    if builtin.is_method:
        receiver, *rest = builtin.params
        forms.append(f"`{kinds(receiver)}.{name}({', '.join(kinds(p) for p in rest)}) → {kinds(builtin.result)}`")
    doc = (getattr(builtin.impl, "__doc__", None) or "").strip().split("\n\n")[0]
    return "\n\n".join([f"**{name}** (expression function)", *forms, *([doc] if doc else [])])


def rule_doc(code: str) -> str | None:
    from opsdsl.lang.rules import RULES

    found = RULES.get(code.upper())
    if found is None:
        return None
    return f"**{found.code} {found.name}** ({found.severity.value})\n\n{found.summary}\n\nDocs: {found.doc_path}"


def _word_at(line: str, col: int, pattern: str = r"[\w.$-]+") -> tuple[str, int, int] | None:
    for match in re.finditer(pattern, line):
        if match.start() <= col <= match.end():
            return match.group(0), match.start(), match.end()
    return None


def hover(path: Path, text: str, line: int, col: int) -> tuple[str, Range] | None:
    """Markdown for what is under the cursor, and its range."""
    lines = text.splitlines()
    if line >= len(lines):
        return None
    current = lines[line]
    code = _word_at(current, col, r"OPS\d{3}")
    if code and (doc := rule_doc(code[0])):
        return doc, Range(line, code[1], line, code[2])
    call = _word_at(current, col, r"[A-Za-z_]\w*(?=\s*\()")
    if call and (doc := function_doc(call[0])):
        return doc, Range(line, call[1], line, call[2])
    if is_ops(path):
        return None
    if not is_test(path):
        symbol = symbol_at(path, text, line, col)
        doc = _symbol_doc(symbol, _safe_data(text)) if symbol is not None and not symbol.definition else None
        if doc:
            return doc, symbol.range
    key_match = re.match(r"^(\s*(?:-\s+)*)([\w.-]+)\s*:", current)
    if key_match and key_match.start(2) <= col <= key_match.end(2):
        return _key_hover(path, text, line, key_match)
    value = re.match(r"^\s*(?:-\s+)*action:\s*([\w.]+)", current)
    if value and value.start(1) <= col <= value.end(1):
        return action_doc(value.group(1)), Range(line, value.start(1), line, value.end(1))
    return None


def _symbol_doc(symbol: Symbol, data: object) -> str | None:
    """What a name used here stands for: the step, playbook, trigger, param or input."""
    if not isinstance(data, dict):
        return None
    if symbol.kind == "step":
        step = next((s for s in _steps_of(data, symbol.scope) if s.get("id") == symbol.name), None)
        if step is None:
            return None
        title = f" — {step['name']}" if isinstance(step.get("name"), str) else ""
        out = [f"**step `{symbol.name}`**{title}", f"`{step.get('action')}` in playbook `{symbol.scope}`"]
        if isinstance(step.get("needs"), list):
            out.append("needs: " + ", ".join(f"`{n}`" for n in step["needs"]))
        return "\n\n".join(out)
    section = {"playbook": "playbooks", "trigger": "triggers", "param": "params"}.get(symbol.kind)
    if section is not None:
        spec = (data.get(section) or {}).get(symbol.name) if isinstance(data.get(section), dict) else None
    else:  # an input of the playbook
        try:
            spec = data["playbooks"][symbol.scope]["inputs"][symbol.name]
        except (KeyError, TypeError):
            spec = None
    if not isinstance(spec, dict):
        return None
    facts = [f"**{symbol.kind} `{symbol.name}`**"]
    for key in ("severity", "on", "type", "when", "from"):
        if key in spec:
            facts.append(f"{key}: `{spec[key]}`")
    if "default" in spec:
        facts.append("default: (secret)" if spec.get("secret") else f"default: `{json.dumps(spec['default'])}`")
    if isinstance(spec.get("description"), str):
        facts.append(spec["description"])
    return "\n\n".join(facts)


def _key_hover(path: Path, text: str, line: int, key_match: re.Match) -> tuple[str, Range] | None:
    key = key_match.group(2)
    cursor = cursor_at(text, line, key_match.end(2) + 1)
    node = schema_at(cursor.path, text, test=is_test(path))
    spec = (node or {}).get("properties", {}).get(key)
    if spec is None and node and isinstance(node.get("additionalProperties"), dict):
        spec = node["additionalProperties"]
    if spec is None:
        return None
    spec = _resolve(spec, schema("test" if is_test(path) else "pack"))
    parts = [f"**{key}**"]
    if spec.get("description"):
        parts.append(spec["description"])
    if "enum" in spec:
        parts.append("One of: " + ", ".join(f"`{v}`" for v in spec["enum"]))
    default = _resolved_default(cursor.path, key, text)
    if default:
        parts.append(default)
    return "\n\n".join(parts), Range(line, key_match.start(2), line, key_match.end(2))


def _resolved_default(path: tuple, key: str, text: str) -> str | None:
    """For a step's `timeout`/`idempotent`/`risk`/`action`: the value the step runs with."""
    playbook, index = _playbook_and_step(path)
    if index is None or len(path) != 4:
        return None
    steps = _steps_of(_safe_data(text), playbook)
    if index >= len(steps):
        return None
    step = steps[index]
    action = str(step.get("action", ""))
    from opsdsl.lang.actions import defaults, resolved_idempotent

    with_ = step.get("with") if isinstance(step.get("with"), dict) else {}
    resolved = {
        "timeout": step.get("timeout") if "timeout" in step else None,
        "idempotent": step.get("idempotent"),
    }
    out = [f"Resolved for this `{action}` step:"]
    timeout = resolved["timeout"]
    out.append(
        f"- `timeout`: {f'`{timeout}`' if timeout else _duration(defaults(action)['timeout']) + ' (the action default)'}"
    )
    idem = resolved_idempotent(
        action, with_, resolved["idempotent"] if isinstance(resolved["idempotent"], bool) else None
    )
    out.append(f"- `idempotent`: `{str(idem).lower()}`" + ("" if "idempotent" in step else " (default)"))
    out.append(f"- `risk`: `{step.get('risk', 'low')}`" + ("" if "risk" in step else " (default)"))
    if key in ("timeout", "idempotent", "risk", "action", "id"):
        return "\n".join(out)
    return None


# ---------------------------------------------------------------- definitions, references, rename


@functools.lru_cache(maxsize=128)
def symbols_in(path: Path, text: str) -> tuple[Symbol, ...]:
    """The names a file defines and uses; cached by content, since definitions and
    references read every pack and pack test of the workspace on each request."""
    if is_ops(path):
        return ()
    if is_test(path):
        return tuple(test_outline(text))
    info = outline(text, expression_keys())
    return tuple(info.symbols) if info else ()


def symbol_at(path: Path, text: str, line: int, col: int) -> Symbol | None:
    for symbol in symbols_in(path, text):
        if symbol.range.contains(line, col):
            return symbol
    return None


def same_symbol(a: Symbol, b: Symbol) -> bool:
    if (a.kind, a.name) != (b.kind, b.name):
        return False
    return a.scope == b.scope or ("" in (a.scope, b.scope) and a.kind in ("step", "input"))


def find(documents: Iterable[tuple[str, Path, str]], target: Symbol, definitions: bool | None = None):
    """(uri, symbol) of every occurrence of `target` in `documents` (uri, path, text):
    definitions only, references only, or both (None)."""
    for uri, path, text in documents:
        for symbol in symbols_in(path, text):
            if same_symbol(symbol, target) and (definitions is None or symbol.definition == definitions):
                yield uri, symbol


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def rename_problem(symbol: Symbol, new_name: str, existing: Iterable[str]) -> str | None:
    if symbol.kind != "step":
        return "only step ids can be renamed"
    if not _NAME.match(new_name):
        return f"`{new_name}` is not a step id (letters, digits and `_`, not starting with a digit)"
    if new_name in set(existing) and new_name != symbol.name:
        return f"playbook `{symbol.scope}` already has a step `{new_name}`"
    return None


# ---------------------------------------------------------------- code actions


_DID_YOU_MEAN = re.compile(r"did you mean `([^`]+)`\?")


def code_actions(uri: str, text: str, diagnostics: list[lsp.Diagnostic], ops: bool = False) -> list[lsp.CodeAction]:
    """Quick fixes for lint's findings in `diagnostics` (those this server published)."""
    lines = text.splitlines()
    out: list[lsp.CodeAction] = []
    for d in diagnostics:
        if d.source != SOURCE or not isinstance(d.code, str):
            continue
        hint = (d.data or {}).get("hint") if isinstance(d.data, dict) else None
        if hint is None and "\nhint: " in d.message:
            hint = d.message.split("\nhint: ", 1)[1]
        match = _DID_YOU_MEAN.search(hint or "")
        if match and _is_word(lines, d.range):
            out.append(_fix(f"Change to `{match.group(1)}`", uri, d, [lsp.TextEdit(d.range, match.group(1))], True))
        for code, key, value in (("OPS041", "timeout", "10s"), ("OPS042", "cooldown", "10m")):
            if d.code != code:
                continue
            if ops:
                edit = _add_ops_line(lines, d.range.start.line, f"{key} {value}")
            elif code == "OPS041":
                edit = _add_setting(lines, d.range, key, value)
            else:
                edit = _add_to_mapping(lines, d.range, key, value)
            if edit:
                out.append(_fix(f"Add `{key}: {value}`" if not ops else f"Add `{key} {value}`", uri, d, [edit], True))
        out.append(_fix(f"Ignore {d.code} on this line", uri, d, [_suppress(lines, d.range.start.line, d.code)], False))
    return out


def _is_word(lines: list[str], at: lsp.Range) -> bool:
    """Whether the range is one name (a did-you-mean replaces exactly that name)."""
    if at.start.line != at.end.line or at.start.line >= len(lines):
        return False
    word = lines[at.start.line][at.start.character : at.end.character]
    return bool(re.fullmatch(r"[\w.$/-]+", word))


def _add_ops_line(lines: list[str], line: int, setting: str) -> lsp.TextEdit | None:
    """`setting` as the first line inside the `{ ... }` block opened on `line` (.ops)."""
    current = lines[line] if line < len(lines) else ""
    if not current.split(" #", 1)[0].rstrip().endswith("{"):
        return None
    indent = len(current) - len(current.lstrip(" ")) + 2
    pos = lsp.Position(line + 1, 0)
    return lsp.TextEdit(lsp.Range(pos, pos), f"{' ' * indent}{setting}\n")


def _fix(title: str, uri: str, d: lsp.Diagnostic, edits: list[lsp.TextEdit], preferred: bool) -> lsp.CodeAction:
    return lsp.CodeAction(
        title=title,
        kind=lsp.CodeActionKind.QuickFix,
        diagnostics=[d],
        is_preferred=preferred or None,
        edit=lsp.WorkspaceEdit(changes={uri: edits}),
    )


def _suppress(lines: list[str], line: int, code: str) -> lsp.TextEdit:
    current = lines[line] if line < len(lines) else ""
    existing = re.search(r"#\s*opsdsl:\s*ignore\[([A-Za-z0-9, ]*)\]", current)
    if existing:
        inside = existing.group(1).strip()
        pos = lsp.Position(line, existing.end(1))
        return lsp.TextEdit(lsp.Range(pos, pos), f", {code}" if inside else code)
    end = lsp.Position(line, len(current))
    return lsp.TextEdit(lsp.Range(end, end), f"  # opsdsl: ignore[{code}]")


def _add_setting(lines: list[str], at: lsp.Range, key: str, value: str) -> lsp.TextEdit | None:
    """`key: value` beside the `action:` at `at` (the step's or the compensation's)."""
    line = at.start.line
    current = lines[line] if line < len(lines) else ""
    action = current.rfind("action", 0, at.start.character)
    if action < 0:
        return None
    after = current[at.end.character :].lstrip()
    if after.startswith((",", "}")):  # a flow mapping: `{id: x, action: notify, ...}`
        pos = lsp.Position(line, at.end.character)
        return lsp.TextEdit(lsp.Range(pos, pos), f", {key}: {value}")
    pos = lsp.Position(line + 1, 0)
    return lsp.TextEdit(lsp.Range(pos, pos), f"{' ' * action}{key}: {value}\n")


def _add_to_mapping(lines: list[str], at: lsp.Range, key: str, value: str) -> lsp.TextEdit | None:
    """`key: value` in the mapping held by the key at `at` (a hook)."""
    line = at.start.line
    current = lines[line] if line < len(lines) else ""
    rest = current[at.end.character :]
    brace = rest.rfind("}")
    if rest.lstrip().startswith(":") and "{" in rest and brace >= 0:
        pos = lsp.Position(line, at.end.character + brace)
        inside = rest[rest.index("{") + 1 : brace].strip()
        return lsp.TextEdit(lsp.Range(pos, pos), f", {key}: {value}" if inside else f"{key}: {value}")
    indent = at.start.character + 2
    for following in lines[line + 1 :]:
        if following.strip() and not following.strip().startswith("#"):
            found = len(following) - len(following.lstrip(" "))
            indent = found if found > at.start.character else indent
            break
    pos = lsp.Position(line + 1, 0)
    return lsp.TextEdit(lsp.Range(pos, pos), f"{' ' * indent}{key}: {value}\n")


# ---------------------------------------------------------------- formatting


def format_ops(path: Path, text: str) -> str | None:
    """`opsdsl fmt`'s layout of an .ops file; None when it has syntax errors (or is YAML)."""
    if not is_ops(path):
        return None
    from opsdsl.lang.ops.convert import format_text

    formatted, _ = format_text(text, path.name)
    return formatted


# ---------------------------------------------------------------- pack tests


TEST_TIMEOUT = 120.0  # seconds for one `opsdsl test FILE` (cases run on a virtual clock: quick)


def test_diagnostics(path: Path, text: str, started: Callable | None = None) -> list[lsp.Diagnostic]:
    """A pack test checked by `opsdsl test FILE --format json`, in a subprocess (the
    rehearsal stage is a peer of this one, so it is run, not imported): its file and case
    diagnostics as they are, and each failed expectation as an error at its line. It runs
    the saved file: the cases are rehearsed with mocked actions, no network, no processes."""
    import subprocess
    import sys

    if not path.is_file():
        return []
    process = subprocess.Popen(
        [sys.executable, "-m", "opsdsl", "test", str(path), "--format", "json"],
        cwd=path.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if started is not None:
        started(process)  # the server kills it when it exits
    try:
        stdout, stderr = process.communicate(timeout=TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return [_test_note(f"opsdsl test took longer than {TEST_TIMEOUT:.0f} s; run it in a terminal")]
    try:
        report = json.loads(stdout)
    except ValueError:
        first = (stderr.strip().splitlines() or ["opsdsl test gave no report"])[-1]
        return [_test_note(first)]
    lines = text.splitlines()
    out: list[lsp.Diagnostic] = []
    for entry in report.get("files", []):
        found = list(entry.get("diagnostics", []))
        for case in entry.get("cases", []):
            found += case.get("diagnostics", [])
            for failure in case.get("failures", []):
                out.append(_failure(failure, case.get("name", ""), lines))
            if case.get("error") and not case.get("diagnostics"):
                out.append(_at_line(case.get("line", 1), lines, f"case `{case.get('name')}`: {case['error']}", None))
        for d in found:
            if Path(str(d.get("file", ""))).name != path.name:
                continue
            start = lsp.Position(max(d["line"] - 1, 0), max(d["column"] - 1, 0))
            end = lsp.Position(
                max(d.get("end_line", d["line"]) - 1, 0), max(d.get("end_column", d["column"] + 1) - 1, 0)
            )
            if (end.line, end.character) <= (start.line, start.character):
                end = lsp.Position(start.line, start.character + 1)
            hint = d.get("hint")
            out.append(
                lsp.Diagnostic(
                    range=lsp.Range(start, end),
                    message=d["message"] + (f"\nhint: {hint}" if hint else ""),
                    severity=lsp.DiagnosticSeverity.Error
                    if d["severity"] == "error"
                    else lsp.DiagnosticSeverity.Warning,
                    code=d["code"],
                    source=SOURCE,
                    data={"hint": hint},
                )
            )
    return sorted(out, key=lambda d: (d.range.start.line, d.range.start.character))


def _failure(failure: dict, case: str, lines: list[str]) -> lsp.Diagnostic:
    message = f"{failure.get('key')}: {failure.get('message')} (case `{case}`)"
    if failure.get("diff"):
        message += "\n" + failure["diff"]
    return _at_line(failure.get("line", 1), lines, message, failure.get("column", 1))


def _at_line(line: int, lines: list[str], message: str, column: int | None) -> lsp.Diagnostic:
    index = max(line - 1, 0)
    text = lines[index] if index < len(lines) else ""
    start = (column - 1) if column else len(text) - len(text.lstrip())
    end = max(len(text), start + 1)
    return lsp.Diagnostic(
        range=lsp.Range(lsp.Position(index, max(start, 0)), lsp.Position(index, end)),
        message=message,
        severity=lsp.DiagnosticSeverity.Error,
        code="test-failure",
        source="opsdsl test",
    )


def _test_note(message: str) -> lsp.Diagnostic:
    return lsp.Diagnostic(
        range=lsp.Range(lsp.Position(0, 0), lsp.Position(0, 1)),
        message=message,
        severity=lsp.DiagnosticSeverity.Error,
        source="opsdsl test",
    )
