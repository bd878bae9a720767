"""Taint: where data from an event may go, and where it may not.

Whoever can set an alert label controls every `${{ }}` that reads `event`, or an input
taken `from:` it. Such a value is *tainted*, unless the input validates it (`pattern:` or
`enum:`). Each key of a built-in action's `with:` is one of four positions:

- DATA: the value is data (a JSON body, a message, an argument of an ordinary program);
  taint is allowed.
- URL: the value is a URL. `${{ }}` after the authority is percent-encoded as one path
  segment or query value when rendered (`raw(x)` inserts it as it is); taint is an error in
  the scheme, host or port, and inside `raw()`.
- COMMAND: an argv list. Taint is an error in the program name, and anywhere after a
  program that runs its arguments as code (a shell, an interpreter, a remote-exec wrapper).
- anything else: a destination or a control (paths, hosts, program names, approvers,
  playbook names, timings): taint is an error.

The same findings drive lint (OPS043 for commands, OPS051 for destinations) and the runtime,
which refuses a step with a finding before it runs. Docs: docs/security.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opsdsl.lang.expr import ExprSyntaxError, parse_template
from opsdsl.lang.expr.nodes import Call, Expression

Path_ = tuple[str | int, ...]

DATA, URL, COMMAND, STDIN, ENV, HEADERS = "data", "url", "command", "stdin", "env", "headers"

# The allow-list: positions of each built-in action that may hold tainted data, and how.
# A key not listed (and every compensation key alike) is a destination: taint is an error.
POSITIONS: dict[str, dict[str, str]] = {
    "shell": {"argv": COMMAND, "stdin": STDIN, "env": ENV},
    "http.request": {"url": URL, "headers": HEADERS, "json": DATA, "body": DATA},
    "approval": {"message": DATA},
    "notify": {"url": URL, "message": DATA, "severity": DATA, "dedup_key": DATA, "fields": DATA},
    "assert": {"that": DATA, "message": DATA},
    "evidence.collect": {"name": DATA, "urls": URL},
    "playbook.call": {"inputs": DATA},
    "report.rca": {"title": DATA, "summary": DATA},
    "wait": {},
}

# Programs that run (part of) their arguments as code, or hand them to a remote shell.
INTERPRETERS = frozenset(
    {
        *("sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox", "toybox"),
        *("python", "python2", "python3", "pypy", "pypy3", "perl", "ruby", "node", "nodejs", "deno", "bun"),
        *("php", "lua", "luajit", "tclsh", "wish", "expect", "rscript", "julia", "osascript", "groovy"),
        *("awk", "gawk", "mawk", "nawk", "busybox", "sed", "gsed", "ed", "ex", "vi", "vim", "nvim", "emacs"),
        *("pwsh", "powershell", "cmd", "wscript", "cscript"),
        *("ssh", "mosh", "rsh", "telnet", "su", "runuser", "script", "watch", "parallel", "find", "make"),
        *("eval", "exec", "source", "gdb", "lldb", "jshell", "irb", "psql", "mysql", "sqlite3", "redis-cli"),
    }
)
# Programs that start another program named by their arguments: look through them.
WRAPPERS = frozenset(
    {
        *("env", "sudo", "doas", "setsid", "stdbuf", "nice", "nohup", "timeout", "ionice", "chrt", "taskset"),
        *("time", "command", "xargs", "flock", "unshare", "nsenter", "chroot", "systemd-run", "strace", "ltrace"),
        *("cgexec", "numactl", "prlimit", "setpriv", "firejail", "bwrap", "catchsegv", "faketime", "torsocks"),
    }
)
# Container and cluster tools whose sub-commands run a program: look past their `--`.
REMOTE_EXEC = frozenset({"kubectl", "oc", "docker", "podman", "nerdctl", "crictl", "ctr", "lxc", "incus"})
# Environment variables that make a program load or run code.
LOADER_VARIABLES = re.compile(
    r"^(LD_\w+|DYLD_\w+|GIT_\w+|BASH_ENV|ENV|BASH_FUNC_\w+|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|IFS|PATH"
    r"|PYTHON\w+|PERL\w*|RUBY\w+|NODE_\w+|\w*_OPTIONS|\w*OPTS|LUA_\w+|TCLLIBPATH|GCONV_PATH|HOSTALIASES"
    r"|LESSOPEN|LESSCLOSE|PAGER|EDITOR|VISUAL|SSH_ASKPASS|SUDO_ASKPASS|KUBECONFIG|DOCKER_HOST|TMPDIR|HOME)$"
)


def url_keys(action: str) -> frozenset[str]:
    """The keys of an action's `with:` that hold URLs (rendered by `render_url`)."""
    return frozenset(key for key, position in POSITIONS.get(action, {}).items() if position == URL)


@dataclass(frozen=True)
class Finding:
    """Tainted data where it may not go: `path` inside the step (e.g. `("with", "argv", 0)`)."""

    code: str  # OPS043 (command) or OPS051 (destination)
    path: Path_
    message: str


def tainted_inputs(inputs: Mapping[str, Any], called_with: Mapping[str, bool] | None = None) -> frozenset[str]:
    """Inputs whose values come from an event (`from:`) or from tainted data passed by a
    `playbook.call` (`called_with`), and that neither `pattern:` nor `enum:` validates."""
    out = set()
    for name, spec in inputs.items():
        spec = spec if isinstance(spec, Mapping) else {}
        if spec.get("pattern") is not None or spec.get("enum") is not None:
            continue
        if spec.get("from") or (called_with or {}).get(name):
            out.add(name)
    return frozenset(out)


def expression_tainted(expression: Expression, tainted: frozenset[str]) -> bool:
    """Whether the expression reads data from outside the pack: the event, a step's
    results, or a tainted input."""
    for ref in expression.references():
        if ref.root in ("event", "steps"):
            return True
        if ref.root == "inputs" and (not ref.path or ref.path[0] in tainted):
            return True
    return False


def tainted_parts(text: Any, tainted: frozenset[str]) -> list[tuple[int, Expression]]:
    """`(offset, expression)` of each tainted `${{ }}` of a template string."""
    if not isinstance(text, str) or "${{" not in text:
        return []
    try:
        template = parse_template(text)
    except ExprSyntaxError:
        return []
    return [(offset, expr) for expr, offset in template.expressions if expression_tainted(expr, tainted)]


def value_tainted(value: Any, tainted: frozenset[str]) -> bool:
    """Whether any string inside `value` interpolates tainted data."""
    if isinstance(value, str):
        return bool(tainted_parts(value, tainted))
    if isinstance(value, Mapping):
        return any(value_tainted(k, tainted) or value_tainted(v, tainted) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(value_tainted(v, tainted) for v in value)
    return False


def step_findings(
    action: str, with_: Any, tainted: frozenset[str], rendered: Mapping[str, Any] | None = None, base: Path_ = ()
) -> list[Finding]:
    """Every place in one action's `with:` where tainted data may not go.

    `rendered`, when given (at run time), names the programs that templates chose."""
    if action not in POSITIONS or not isinstance(with_, Mapping):
        return []  # plugin actions: their inputs are data to them
    allowed = POSITIONS[action]
    found: list[Finding] = []
    for key, value in with_.items():
        at = (*base, key)
        position = allowed.get(key)
        if position in (DATA, STDIN, ENV, HEADERS, COMMAND, URL) and not value_tainted(value, tainted):
            continue
        if position is None:
            if value_tainted(value, tainted) and action == "evidence.collect" and key == "commands":
                found.append(Finding("OPS043", at, "event data is part of an evidence command, re-run on resume"))
            elif value_tainted(value, tainted):
                found.append(
                    Finding("OPS051", at, f"event data sets `{key}` of `{action}`, which only the pack may set")
                )
        elif position == URL:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = (*at, i) if isinstance(value, list) else at
                found.extend(Finding("OPS051", where, message) for message in url_findings(item, tainted))
        elif position == COMMAND:
            argv = value if isinstance(value, list) else []
            shown = (rendered or {}).get(key)
            found.extend(
                Finding("OPS043", (*at, i), message)
                for i, message in argv_findings(argv, tainted, shown if isinstance(shown, list) else None)
            )
        elif position == STDIN:
            program = _program_of(with_.get("argv"), (rendered or {}).get("argv"))
            if program is None or program in INTERPRETERS:
                found.append(
                    Finding("OPS043", at, f"event data is the standard input of `{program or 'a templated program'}`")
                )
        elif position == ENV and isinstance(value, Mapping):
            for name, item in value.items():
                if value_tainted(name, tainted):
                    found.append(Finding("OPS043", (*at, name), "event data names an environment variable"))
                elif value_tainted(item, tainted) and LOADER_VARIABLES.match(str(name)):
                    found.append(Finding("OPS043", (*at, name), f"event data sets `{name}`, which runs or loads code"))
        elif position == HEADERS and isinstance(value, Mapping):
            for name in value:
                if value_tainted(name, tainted):
                    found.append(Finding("OPS051", (*at, name), "event data names an HTTP header"))
    return found


def _basename(program: str) -> str:
    name = program.replace("\\", "/").rsplit("/", 1)[-1].lower()
    name = re.sub(r"\.exe$", "", name)
    versioned = re.sub(r"[0-9.]+$", "", name)
    return name if name in INTERPRETERS | WRAPPERS | REMOTE_EXEC else versioned or name


def _program_of(argv: Any, rendered: Any) -> str | None:
    """The program an argv runs after wrappers; None when a template picks it."""
    chosen = rendered if isinstance(rendered, list) else argv
    if not isinstance(chosen, list) or not chosen or not isinstance(chosen[0], str):
        return None
    if "${{" in chosen[0]:
        return None
    index = 0
    while index < len(chosen) and isinstance(chosen[index], str) and _basename(chosen[index]) in WRAPPERS:
        index = _after_wrapper(chosen, index)
    if index >= len(chosen) or not isinstance(chosen[index], str) or "${{" in chosen[index]:
        return None
    return _basename(chosen[index])


def _after_wrapper(argv: list, index: int) -> int:
    """The index of the program a wrapper at `index` starts: past its options, `VAR=value`
    settings and option values that are numbers or durations (timeout 5s, nice -n 10)."""
    wrapper = _basename(argv[index])
    index += 1
    while index < len(argv):
        arg = argv[index]
        if not isinstance(arg, str):
            break
        if arg == "--":
            return index + 1
        if arg.startswith("-") or "=" in arg or re.fullmatch(r"[0-9.]+[a-z]*", arg):
            index += 1
            continue
        if wrapper in ("flock", "chroot", "nsenter") and not arg.startswith("-"):
            index += 1  # their first operand is a lock file or a root folder
            wrapper = ""
            continue
        break
    return index


def argv_findings(argv: list, tainted: frozenset[str], rendered: list | None = None) -> Iterator[tuple[int, str]]:
    """`(index, message)` for each argv element where tainted data may not go."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if not isinstance(arg, str):
            return
        if tainted_parts(arg, tainted):
            yield index, "event data picks the program to run"
            return
        program = _basename(rendered[index] if rendered and index < len(rendered) else arg)
        if "${{" in arg and rendered is None:
            return  # a param picks the program: checked again at run time, rendered
        if program in WRAPPERS:
            after = _after_wrapper(argv, index)
            for j in range(index + 1, min(after, len(argv))):
                if value_tainted(argv[j], tainted):
                    yield j, f"event data is an option or setting of `{program}`, which starts another program"
            index = after
            continue
        if program in REMOTE_EXEC:
            if _runs_code(argv[index + 1 :]):
                for j in range(index + 1, len(argv)):
                    if value_tainted(argv[j], tainted):
                        yield j, f"event data is an argument of `{program}`, which runs a program elsewhere"
            return
        if program in INTERPRETERS:
            start = _script_file(argv, index, program, tainted)
            for j in range(start, len(argv)):
                if value_tainted(argv[j], tainted):
                    yield j, f"event data is an argument of `{program}`, which runs its arguments as code"
            return
        if rendered is not None:  # at run time: a value that would read as an option is not data
            options_end = argv.index("--", index + 1) if "--" in argv[index + 1 :] else len(argv)
            for j in range(index + 1, options_end):
                value = rendered[j] if j < len(rendered) else None
                if (
                    isinstance(value, str)
                    and value.startswith("-")
                    and tainted_parts(argv[j], tainted)
                    and not _starts_with_literal(argv[j])
                ):
                    yield j, f"event data starts with `-`: `{program}` would read it as an option"
        return  # an ordinary program: its arguments are data


def _runs_code(args: list) -> bool:
    return any(isinstance(a, str) and a in ("exec", "run", "debug", "attach", "ssh", "cp", "create") for a in args)


# ---- URLs ---------------------------------------------------------------------------------

ORIGIN, PATH, QUERY, FRAGMENT = "origin", "path", "query", "fragment"


def url_positions(text: str) -> list[tuple[str, Expression, bool]]:
    """`(component, expression, raw)` of each `${{ }}` of a URL template, in order;
    `raw` when the expression is a call of `raw()`."""
    template = parse_template(text)
    out = []
    before: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            before.append(part)
            continue
        expr = part[0]
        out.append((url_component("".join(before)), expr, _is_raw(expr)))
        before.append("\x00")  # some value: not a separator
    return out


def url_component(prefix: str) -> str:
    """Which part of a URL the text after `prefix` is in."""
    rest = prefix
    scheme = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:(//)?", rest)
    if scheme:
        rest = rest[scheme.end() :]
    if not any(sep in rest for sep in "/?#"):
        return ORIGIN
    if "#" in rest:
        return FRAGMENT
    if "?" in rest:
        return QUERY
    return PATH


def _is_raw(expr: Expression) -> bool:
    root = expr.root
    return isinstance(root, Call) and root.function == "raw" and root.target is None


def url_findings(text: Any, tainted: frozenset[str]) -> list[str]:
    if not isinstance(text, str) or "${{" not in text:
        return []
    try:
        positions = url_positions(text)
    except ExprSyntaxError:
        return []
    found = []
    for component, expr, raw in positions:
        if not expression_tainted(expr, tainted):
            continue
        if component == ORIGIN:
            found.append(f"event data picks the URL's scheme, host or port (`{expr.text}`)")
        elif raw:
            found.append(f"event data is inserted into the URL unencoded by `raw()` (`{expr.text}`)")
    return found


def render_url(text: str, activation: Mapping[str, Any]) -> str:
    """Render a URL template: each `${{ }}` after the authority is percent-encoded as one
    path segment, query value or fragment; in the scheme, host or port, or inside `raw()`,
    it is inserted as it is. A path value of `.` or `..` is refused: it would climb."""
    from urllib.parse import quote

    from opsdsl.errors import EvalError
    from opsdsl.lang.expr import compile_expr
    from opsdsl.lang.expr.template import interpolated_text

    template = parse_template(text)
    if template.is_literal:
        return template.literal
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        expr = part[0]
        try:
            value = interpolated_text(compile_expr(expr)(activation))
        except EvalError as error:
            raise EvalError(f"in `${{{{ {expr.text} }}}}`: {error.message}") from None
        component = url_component("".join("\x00" if not isinstance(p, str) else p for p in out))
        if component == ORIGIN or _is_raw(expr):
            out.append(value)
            continue
        if component == PATH and value in (".", ".."):
            raise EvalError(f"in `${{{{ {expr.text} }}}}`: a URL path segment may not be `{value}`")
        out.append(quote(value, safe=""))
    return "".join(out)


def input_problem(spec: Mapping[str, Any], value: Any) -> str | None:
    """Why `value` breaks the input's `enum:`, `max_length:` or `pattern:`; None when it
    keeps them. The message describes the value, never quotes it."""
    enum = spec.get("enum")
    if enum is not None and value not in enum:
        return f"is not one of the {len(enum)} values its `enum:` allows"
    text = value if isinstance(value, str) else _text_of(value)
    limit = spec.get("max_length")
    if limit is not None and len(text) > limit:
        return f"is {len(text)} characters long; its `max_length:` is {limit}"
    pattern = spec.get("pattern")
    if pattern is not None:
        compiled = compile_pattern(pattern)
        if compiled is None:
            return "cannot be checked: its `pattern:` is not a valid RE2 expression"
        if compiled.fullmatch(text) is None:
            return f"({len(text)} characters) does not match its `pattern:`"
    return None


def compile_pattern(pattern: str) -> Any:
    """An input's `pattern:` compiled by RE2 (linear time, whatever the value); None if
    RE2 refuses it."""
    import re2

    try:
        return _compiled(pattern)
    except re2.error:
        return None


def _compiled(pattern: str) -> Any:
    import re2

    found = _PATTERNS.get(pattern)
    if found is None:
        options = re2.Options()
        options.log_errors = False  # RE2 would print refusals to stderr; the caller reports them
        found = re2.compile(pattern, options)
        if len(_PATTERNS) < 1024:
            _PATTERNS[pattern] = found
    return found


_PATTERNS: dict[str, Any] = {}


def _text_of(value: Any) -> str:
    from opsdsl.lang.expr.template import interpolated_text

    try:
        return interpolated_text(value)
    except Exception:
        return str(value)


def _starts_with_literal(text: str) -> bool:
    """Whether a template begins with literal text (`--cluster=${{ x }}`), so the value
    cannot be where an option starts."""
    try:
        first = parse_template(text).parts[0]
    except ExprSyntaxError:
        return False
    return isinstance(first, str) and first != ""


# Interpreters whose first operand may be a script file: the arguments after a fixed script
# (with no code flag before it) are the script's data, not code.
SCRIPT_RUNNERS = frozenset(
    {"sh", "bash", "zsh", "dash", "ksh", "python", "python2", "python3", "perl", "ruby", "node", "php", "lua", "tclsh"}
)
_CODE_FLAGS = re.compile(r"^(-[a-zA-Z]*[ceEpr][a-zA-Z]*|--?command|--eval|--print|-m)$")


def _script_file(argv: list, index: int, program: str, tainted: frozenset[str]) -> int:
    """Where tainted arguments of an interpreter start to count: right after it, or after a
    fixed script file it was given (`python3 tool.py ARG`)."""
    if program not in SCRIPT_RUNNERS:
        return index + 1
    for j in range(index + 1, len(argv)):
        arg = argv[j]
        if not isinstance(arg, str) or value_tainted(arg, tainted):
            return index + 1
        if arg.startswith("-"):
            if _CODE_FLAGS.match(arg):
                return index + 1
            continue
        return len(argv)  # a fixed script file: what follows is its data
    return index + 1
