"""Plain pack data to text: .ops (then laid out by the printer) and YAML.

Both work from the data a loader produced, not from the model, so durations stay the
strings the author wrote (`90s` stays `90s`) and nothing is filled in.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from opsdsl.errors import OpsdslError

from .printer import DURATION, key, number, quote, word


class ConversionError(OpsdslError):
    """Data that one of the forms cannot express (it would not pass the schema either)."""


_PACK_KEYS = ("apiVersion", "kind", "metadata", "params", "triggers", "hooks", "playbooks", "policies")
_STEP_ORDER = ("name", "description", "needs", "when", "risk", "runner", "with", "timeout", "retry", "compensate")
_STEP_ORDER += ("continue_on_error", "idempotent")


def _check(entry: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(entry, dict):
        raise ConversionError(f"{where}: expected a mapping")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise ConversionError(f"{where}: `{unknown[0]}` has no .ops spelling (it is not a key of the language)")
    return entry


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConversionError(f"{where}: expected a string, found {type(value).__name__}")
    return value


def _expr(value: Any, where: str) -> str:
    text = _text(value, where)
    if not text.strip():
        raise ConversionError(f"{where}: empty expression")
    return text.strip()


def literal(value: Any) -> str:
    """A JSON-like .ops literal on one line."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConversionError(f"{value} has no .ops spelling")
        return number(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key(str(k))}: {literal(v)}" for k, v in value.items()) + "}"
    raise ConversionError(f"{type(value).__name__} has no .ops spelling")


def _duration(value: Any, where: str) -> str:
    text = _text(value, where)
    return text if DURATION.match(text) else quote(text)


def _flag(name: str, value: Any) -> str:
    if value is True:
        return name
    if value is False:
        return f"{name} false"
    raise ConversionError(f"`{name}` must be true or false")


def to_ops(data: Any) -> str:
    """.ops text for pack data (unformatted; `opsdsl.lang.ops.convert` lays it out)."""
    _check(data, _PACK_KEYS, "pack")
    kind = data.get("kind")
    if data.get("apiVersion") != "opsdsl/v1" or kind not in ("Pack", "PolicyPack"):
        raise ConversionError("only `apiVersion: opsdsl/v1` packs of kind Pack or PolicyPack convert to .ops")
    meta = _check(data.get("metadata"), ("name", "version", "owner", "description", "labels"), "metadata")
    head = "pack" if kind == "Pack" else "policypack"
    name, version, owner = (word(_text(meta.get(k), f"metadata.{k}")) for k in ("name", "version", "owner"))
    out = [f"{head} {name} version {version} owner {owner} {{"]
    if "description" in meta:
        out.append("description " + quote(_text(meta["description"], "metadata.description")))
    if "labels" in meta:
        out.append("labels " + literal(meta["labels"]))
    for i, (pname, param) in enumerate((data.get("params") or {}).items()):
        if not i:
            out.append("")
        out.append(_typed("param", pname, param, ("type", "default", "description", "secret", "enum")))
    for tname, trigger in (data.get("triggers") or {}).items():
        out.append("")
        out.extend(_trigger(tname, trigger))
    for hname, hook in (data.get("hooks") or {}).items():
        out.append("")
        out.extend(_hook(hname, hook))
    for pbname, playbook in (data.get("playbooks") or {}).items():
        out.append("")
        out.extend(_playbook(pbname, playbook))
    for i, policy in enumerate(data.get("policies") or []):
        out.append("")
        out.extend(_policy(policy, i))
    out.append("}")
    return "\n".join(out) + "\n"


def _typed(head: str, name: str, entry: Any, allowed: tuple[str, ...]) -> str:
    where = f"{head} {name}"
    _check(entry, allowed, where)
    text = f"{head} {word(name)}: {word(_text(entry.get('type'), where + '.type'))}"
    if "default" in entry:
        text += " = " + literal(entry["default"])
    if "description" in entry:
        text += " " + quote(_text(entry["description"], where + ".description"))
    if "from" in entry:
        text += " from " + _expr(entry["from"], where + ".from")
    body = []
    if "secret" in entry:
        body.append(_flag("secret", entry["secret"]))
    if "enum" in entry:
        body.append("enum " + literal(entry["enum"]))
    if "pattern" in entry:
        body.append("pattern " + quote(_text(entry["pattern"], where + ".pattern")))
    if "max_length" in entry:
        body.append("max_length " + literal(entry["max_length"]))
    return text + (" { " + "\n".join(body) + " }" if body else "")


def _trigger(name: str, trigger: Any) -> list[str]:
    where = f"trigger {name}"
    _check(trigger, ("on", "when", "threshold", "for", "description"), where)
    head = f"trigger {word(name)} on {word(_text(trigger.get('on'), where + '.on'))}"
    body = []
    if "description" in trigger:
        body.append("description " + quote(_text(trigger["description"], where)))
    if "when" in trigger:
        body.append("when " + _expr(trigger["when"], where + ".when"))
    if "threshold" in trigger:
        threshold = _check(trigger["threshold"], ("count", "within", "per"), where + ".threshold")
        line = f"threshold {literal(threshold.get('count'))} within {_duration(threshold.get('within'), where)}"
        if "per" in threshold:
            line += " per " + _expr(threshold["per"], where + ".threshold.per")
        body.append(line)
    if "for" in trigger:
        body.append("for " + _duration(trigger["for"], where + ".for"))
    if list(trigger) in (["on"], ["on", "when"], ["when", "on"]):
        return [head + (" " + body[0] if body else "")]
    return [head + " {", *body, "}"]


def _hook(name: str, hook: Any) -> list[str]:
    where = f"hook {name}"
    _check(hook, ("trigger", "run", "cooldown", "dedupe", "max_concurrent", "escalate", "description"), where)
    trigger, run = word(_text(hook.get("trigger"), where)), word(_text(hook.get("run"), where))
    body = []
    if "description" in hook:
        body.append("description " + quote(_text(hook["description"], where)))
    if "cooldown" in hook:
        body.append("cooldown " + _duration(hook["cooldown"], where))
    if "dedupe" in hook:
        body.append("dedupe " + _expr(hook["dedupe"], where + ".dedupe"))
    if "max_concurrent" in hook:
        body.append("max_concurrent " + literal(hook["max_concurrent"]))
    if "escalate" in hook:
        body.append("escalate " + word(_text(hook["escalate"], where)))
    return [f"hook {word(name)}: {trigger} -> {run}" + (" {" if body else ""), *body, *(["}"] if body else [])]


def _playbook(name: str, playbook: Any) -> list[str]:
    where = f"playbook {name}"
    _check(playbook, ("severity", "description", "inputs", "timeout", "steps", "finally"), where)
    out = [f"playbook {word(name)} severity {word(_text(playbook.get('severity'), where))} {{"]
    if "description" in playbook:
        out.append("description " + quote(_text(playbook["description"], where)))
    if "timeout" in playbook:
        out.append("timeout " + _duration(playbook["timeout"], where))
    for iname, entry in (playbook.get("inputs") or {}).items():
        out.append(
            _typed("input", iname, entry, ("type", "from", "default", "description", "pattern", "enum", "max_length"))
        )
    for step in playbook.get("steps") or []:
        out.append("")
        out.extend(_step(step, where))
    if "finally" in playbook:
        out.append("")
        out.append("finally {")
        for i, step in enumerate(playbook["finally"] or []):
            if i:
                out.append("")
            out.extend(_step(step, where))
        out.append("}")
    out.append("}")
    return out


def _step(step: Any, where: str) -> list[str]:
    _check(step, ("id", "action", *_STEP_ORDER), where + " step")
    here = f"{where} step {step.get('id')}"
    out = [f"step {word(_text(step.get('id'), here))}: {word(_text(step.get('action'), here))} {{"]
    for name in _STEP_ORDER:
        if name not in step:
            continue
        value = step[name]
        if name in ("name", "description"):
            out.append(f"{name} {quote(_text(value, here))}")
        elif name == "when":
            out.append("when " + _expr(value, here + ".when"))
        elif name in ("needs", "with"):
            out.append(f"{name} {literal(value)}")
        elif name in ("risk", "runner"):
            out.append(f"{name} " + word(_text(value, here)))
        elif name == "timeout":
            out.append("timeout " + _duration(value, here))
        elif name == "retry":
            out.append(_retry(value, here))
        elif name == "compensate":
            out.extend(_compensate(value, here))
        else:
            out.append(_flag(name, value))
    out.append("}")
    return out


def _retry(retry: Any, where: str) -> str:
    _check(retry, ("attempts", "backoff", "initial", "max", "jitter"), where + ".retry")
    text = "retry " + literal(retry.get("attempts"))
    if "backoff" in retry:
        text += " " + word(_text(retry["backoff"], where))
    for name in ("initial", "max"):
        if name in retry:
            text += f" {name} {_duration(retry[name], where)}"
    if "jitter" in retry:
        if not isinstance(retry["jitter"], bool):
            raise ConversionError(f"{where}.retry.jitter must be true or false")
        text += " jitter " + literal(retry["jitter"])
    return text


def _compensate(comp: Any, where: str) -> list[str]:
    _check(comp, ("action", "with", "timeout", "retry"), where + ".compensate")
    out = ["compensate " + word(_text(comp.get("action"), where)) + " {"]
    if "with" in comp:
        out.append("with " + literal(comp["with"]))
    if "timeout" in comp:
        out.append("timeout " + _duration(comp["timeout"], where))
    if "retry" in comp:
        out.append(_retry(comp["retry"], where + ".compensate"))
    return [*out, "}"]


def _policy(policy: Any, index: int) -> list[str]:
    where = f"policies[{index}]"
    _check(policy, ("id", "description", "when", "effect", "message", "approvals", "distinct_from_requester"), where)
    out = [f"policy {word(_text(policy.get('id'), where))} {word(_text(policy.get('effect'), where))} {{"]
    if "description" in policy:
        out.append("description " + quote(_text(policy["description"], where)))
    if "when" in policy:
        out.append("when " + _expr(policy["when"], where + ".when"))
    if "approvals" in policy:
        out.append("approvals " + literal(policy["approvals"]))
    if "distinct_from_requester" in policy:
        out.append("distinct_from_requester " + literal(policy["distinct_from_requester"]))
    if "message" in policy:
        out.append("message " + quote(_text(policy["message"], where)))
    return [*out, "}"]


# -- YAML -------------------------------------------------------------------------------------

_PLAIN_START = re.compile(r"[A-Za-z0-9_/$(.]")
_NOT_PLAIN = re.compile(r"^(?:true|false|null|~)$|: | #|:$|\s$|[\x00-\x1f\x7f\"\\{}]", re.IGNORECASE)
_FLOW_INDICATORS = re.compile(r"[,\[\]{}]")
_CORE_NUMBER = re.compile(
    r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_YAML_WIDTH = 100


def yaml_scalar(value: Any, flow: bool = False) -> str:
    """A scalar as the core-schema loader reads it back: plain where unambiguous, else quoted."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    text = str(value)
    plain = (
        text
        and _PLAIN_START.match(text)
        and text.isprintable()
        and not _NOT_PLAIN.search(text)
        and not _CORE_NUMBER.match(text)
        and not (flow and _FLOW_INDICATORS.search(text))
    )
    return text if plain else yaml_quote(text)


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar: JSON's escapes, plus `\\U` for characters beyond the BMP
    (YAML has no surrogate pairs)."""
    out = json.dumps(text, ensure_ascii=False)
    if out.isprintable():
        return out
    return "".join(c if c.isprintable() else f"\\U{ord(c):08x}" if ord(c) > 0xFFFF else f"\\u{ord(c):04x}" for c in out)


def _flow(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_scalar(str(k), True)}: {_flow(v)}" for k, v in value.items()) + "}"
    return yaml_scalar(value, True)


def _block(value: Any, indent: int, out: list[str], prefix: str) -> None:
    """`prefix` (a key with `: `, or `- `) then `value`: flow when it fits, else block."""
    pad = "  " * indent
    if not isinstance(value, dict | list) or not value:
        out.append(pad + prefix + (_flow(value) if value == [] or value == {} else yaml_scalar(value)))
        return
    flow = _flow(value)
    if len(pad) + len(prefix) + len(flow) <= _YAML_WIDTH and _depth(value) <= 2 and prefix != "":
        out.append(pad + prefix + flow)
        return
    out.append(pad + prefix.rstrip())
    inner = indent + 1
    if isinstance(value, dict):
        for k, v in value.items():
            _block(v, inner, out, f"{yaml_scalar(str(k))}: ")
    else:
        for v in value:
            _item(v, inner, out)


def _item(value: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict) and value and len(pad) + len(_flow(value)) + 2 > _YAML_WIDTH:
        first = True
        for k, v in value.items():
            sub: list[str] = []
            _block(v, indent + 1, sub, f"{yaml_scalar(str(k))}: ")
            line = sub[0][len(pad) + 2 :]
            sub[0] = pad + ("- " if first else "  ") + line
            out.extend(sub)
            first = False
        return
    _block(value, indent, out, "- ")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def to_yaml(data: dict) -> str:
    """YAML for pack data: top-level sections as blocks, small leaves in flow style."""
    out: list[str] = []
    for section, value in data.items():
        if isinstance(value, dict) and section in ("params", "triggers", "hooks", "playbooks"):
            out.append("")
            out.append(f"{section}:")
            for name, entry in value.items():
                if section == "playbooks":
                    _playbook_yaml(name, entry, out)
                else:
                    _block(entry, 1, out, f"{yaml_scalar(name)}: ")
        elif section == "policies" and isinstance(value, list):
            out.append("")
            out.append("policies:")
            for policy in value:
                _item(policy, 1, out)
        elif section == "metadata" and isinstance(value, dict):
            out.append("metadata:")
            for k, v in value.items():
                _block(v, 1, out, f"{yaml_scalar(k)}: ")
        else:
            _block(value, 0, out, f"{yaml_scalar(section)}: ")
    return "\n".join(out).lstrip("\n") + "\n"


def _playbook_yaml(name: str, playbook: Any, out: list[str]) -> None:
    if not isinstance(playbook, dict):
        _block(playbook, 1, out, f"{yaml_scalar(name)}: ")
        return
    out.append(f"  {yaml_scalar(name)}:")
    for k, v in playbook.items():
        if k in ("steps", "finally") and isinstance(v, list) and v:
            out.append(f"    {k}:")
            for i, step in enumerate(v):
                if i:
                    out.append("")
                _step_yaml(step, out)
        else:
            _block(v, 2, out, f"{yaml_scalar(k)}: ")


def _step_yaml(step: Any, out: list[str]) -> None:
    if not isinstance(step, dict) or not step:
        _block(step, 3, out, "- ")
        return
    first = True
    for k, v in step.items():
        sub: list[str] = []
        _block(v, 4, sub, f"{yaml_scalar(str(k))}: ")
        sub[0] = "      " + ("- " if first else "  ") + sub[0][8:]
        out.extend(sub)
        first = False
