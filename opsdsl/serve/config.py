"""`opsdsl serve --config opsdsl-serve.toml`: the service's settings in one file.

`load_config(path)` reads the TOML file (bounded, a regular file), checks every table and
key against the schema below, and returns a `ServiceConfig`: paths resolved against the
file's folder, pack folders expanded to their pack files, and `None` for every setting the
file leaves out (the command line's flags, then the defaults, decide those). A problem is a
`ConfigError` (exit 2) that names the file, line and column of the key, shows the line,
and hints at the key meant when a name is close to a known one. `tomllib` keeps no
positions; `toml_positions` finds them.

The file is read by an operator's service, so it is trusted more than an event, but not
blindly: it is at most `MAX_CONFIG_BYTES`; a folder of packs is walked without following
links, over at most `MAX_FOLDER_ENTRIES` entries, and must hold a pack; the signing key must
be outside the state directory and private; a passphrase is read from an environment
variable or a file, never from the TOML itself.

Also here, because `fire` and `watch` share them with `serve`: params for a set of plans
from the file's `[params.PACK]` and `[params.PACK.ENV]` tables, a `--params-file` and
`--param` flags (`pack_params`), and reading a params file (`read_params_file`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opsdsl.errors import ConfigError, UsageError
from opsdsl.serve.toml_positions import key_positions, locate

MAX_CONFIG_BYTES = 1024 * 1024
MAX_PARAMS_FILE_BYTES = 1024 * 1024
MAX_FOLDER_ENTRIES = 20_000
SHOWN_WIDTH = (
    160  # characters of a config line shown under an error  # files and folders looked at under one folder of packs
)
LOG_FORMATS = ("text", "json")

KeyPath = tuple[str | int, ...]


# ---- what the file may hold ----------------------------------------------------------------


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string"


def _integer(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer"
        if value < low or (high is not None and value > high):
            return f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"
        return None

    return check


def _seconds(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return "a number of seconds"
        if value < low or value == float("inf"):
            return f"a number of seconds of at least {low:g}"
        return None

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _strings(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return "a list of non-empty strings"
    return None


def _choice(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else " or ".join(f'"{c}"' for c in choices)

    return check


def _url(value: Any) -> str | None:
    if not isinstance(value, str):
        return "an http:// or https:// URL"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "an http:// or https:// URL"
    return None


def _database(value: Any) -> str | None:
    if isinstance(value, str) and (value == "sqlite" or re.match(r"postgres(ql)?://", value)):
        return None
    return 'a postgresql:// URL, or "sqlite"'


def _header_name(value: Any) -> str | None:
    token = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if not isinstance(value, str) or not value or any(c not in token for c in value):
        return "an HTTP header name (such as X-Forwarded-Email)"
    return None


def addresses_problem(value: Any) -> str | None:
    """Why `value` is not a list of IP addresses and networks (`trusted_proxies`), or None."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "a list of IP addresses or networks"
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"a list of IP addresses or networks ({item!r} is neither)"
    return None


def _secret_source(value: Any) -> str | None:
    if isinstance(value, str):
        kind, colon, where = value.partition(":")
        if colon and kind in ("env", "file") and where:
            return None
    return '"env:VARIABLE" or "file:PATH"'


TABLES: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "": {
        "state_dir": _string,
        "database": _database,
        "public_url": _url,
        "log_format": _choice(*LOG_FORMATS),
        "escalation_url": _url,
    },
    "listen": {"host": _string, "port": _integer(0, 65535)},
    "packs": {
        "paths": _strings,
        "policies": _strings,
        "plans": _strings,
        "trust": _string,
        "environment": _string,
    },
    "signing": {"key": _string, "passphrase_env": _string, "passphrase_file": _string},
    "intake": {
        "token_file": _string,
        "hmac_secret_file": _string,
        "accept_legacy_signatures": _boolean,
        "insecure_no_auth": _boolean,
        "metrics_no_auth": _boolean,
    },
    "auth": {"trusted_user_header": _header_name, "trusted_proxies": addresses_problem},
    "limits": {
        "max_body": _integer(1),
        "queue_size": _integer(1),
        "max_backlog_bytes": _integer(1),
        "header_timeout": _seconds(0.1),
        "body_timeout": _seconds(0.1),
        "max_connections_per_peer": _integer(1),
        "max_runs": _integer(1),
        "drain_timeout": _seconds(0),
    },
}
FREE_TABLES = (
    "params",
    "secrets",
    "notifiers",
    "escalation",
    "follow_ups",
)  # tables whose keys are names the user chooses
TOP_LEVEL = sorted([k for k in TABLES[""]] + [t for t in TABLES if t] + list(FREE_TABLES))


@dataclass(frozen=True)
class ServiceConfig:
    """What the file says; None (or empty) where it says nothing."""

    origin: Path
    state_dir: Path | None = None
    database: str | None = (
        None  # a postgresql:// URL or "sqlite"; --database overrides it, it overrides $OPSDSL_DATABASE
    )
    public_url: str | None = None
    log_format: str | None = None
    escalation_url: str | None = None
    host: str | None = None
    port: int | None = None
    packs: tuple[Path, ...] = ()  # pack files, folders expanded
    policies: tuple[Path, ...] | None = None  # None: those beside each pack
    plans: tuple[Path, ...] = ()
    trust: Path | None = None
    environment: str | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # pack → params and ENV tables
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (env|file, where)
    signing_key: Path | None = None
    passphrase_env: str | None = None
    passphrase_file: Path | None = None
    token_file: Path | None = None
    hmac_secret_file: Path | None = None
    accept_legacy_signatures: bool | None = None
    insecure_no_auth: bool | None = None
    metrics_no_auth: bool | None = None
    trusted_user_header: str | None = None
    trusted_proxies: tuple[str, ...] | None = None
    notifiers: tuple[dict[str, Any], ...] = ()
    escalation: Any = None  # runtime.escalation.EscalationPolicy, from [escalation]; None: the seed's levels
    follow_ups: Any = None  # runtime.incidents.Tracker, from [follow_ups]; None: follow-ups by the CLI only
    limits: dict[str, float] = field(default_factory=dict)
    text: str = field(default="", repr=False)  # the file, for positions of later errors

    def error(self, path: KeyPath, problem: str, hint: str | None = None) -> ConfigError:
        """A ConfigError about the key at `path` of this file."""
        return config_error(self.origin, self.text, path, problem, hint)


def config_error(origin: Path, text: str, path: KeyPath, problem: str, hint: str | None = None) -> ConfigError:
    """`FILE:LINE:COL: [table] key: problem`, the line with a caret under the key, and the hint."""
    try:
        line, col = locate(key_positions(text), path) if text else (1, 1)
    except RecursionError:  # nested as deep as tomllib allows: the table's header will do
        line, col = 1, 1
    return ConfigError(_render(origin, text, line, col, f"{_name(path)}: {problem}", hint))


def _render(origin: Path, text: str, line: int, col: int, message: str, hint: str | None = None) -> str:
    lines = text.splitlines()
    shown = lines[line - 1] if 0 < line <= len(lines) else ""
    out = [f"{origin}:{line}:{col}: {message}"]
    if len(shown) > SHOWN_WIDTH or col > SHOWN_WIDTH:  # a line of a hostile file: cut, no caret
        out.append(f"{line:>5} | {shown[:SHOWN_WIDTH]}…")
    elif shown:
        gutter = f"{line:>5} | "
        out += [gutter + shown.expandtabs(1), " " * (len(gutter) - 2) + "| " + " " * (col - 1) + "^"]
    if hint:
        out.append(f"      = hint: {hint}")
    return "\n".join(out)


def _name(path: KeyPath) -> str:
    """`[limits] max_body`, `[[notifiers]] #2 url`, `state_dir`: a key as a reader finds it."""
    parts = [p for p in path]
    if not parts:
        return "the file"
    if len(parts) == 1:
        return str(parts[0])
    if isinstance(parts[1], int):
        head, rest = f"[[{parts[0]}]] #{parts[1] + 1}", parts[2:]
    else:
        head, rest = f"[{parts[0]}]", parts[1:]
    return " ".join([head, ".".join(_quoted(p) for p in rest)]).strip()


def _quoted(part: str | int) -> str:
    text = str(part)
    return text if text and all(c.isalnum() or c in "_-" for c in text) else json.dumps(text)


# ---- reading and checking --------------------------------------------------------------------


def load_config(path: Path) -> ServiceConfig:
    """The service configuration in `path`; ConfigError (exit 2) naming file:line:col otherwise."""
    from opsdsl.lang.untrusted import read_limited

    data, problem = read_limited(path, MAX_CONFIG_BYTES)
    if data is None:
        if problem and problem.startswith("larger than"):
            problem = f"larger than {MAX_CONFIG_BYTES // 1024} KiB; a service configuration is a few dozen lines"
        raise ConfigError(f"--config {path}: cannot read it: {problem}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 (byte {error.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line, col, what = _toml_problem(str(error))
        raise ConfigError(_render(path, text, line, col, f"not valid TOML: {what}")) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    return _Checker(path, text, document).config()


def _toml_problem(message: str) -> tuple[int, int, str]:
    """tomllib's "Invalid value (at line 3, column 7)" as (3, 7, "invalid value")."""
    found = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", message)
    if found is None:
        return 1, 1, message
    what = found.group(1)
    return int(found.group(2)), int(found.group(3)), what[:1].lower() + what[1:]


class _Checker:
    def __init__(self, origin: Path, text: str, document: dict[str, Any]) -> None:
        self.origin = origin
        self.text = text
        self.document = document
        self.folder = origin.resolve().parent

    def fail(self, path: KeyPath, problem: str, hint: str | None = None) -> ConfigError:
        return config_error(self.origin, self.text, path, problem, hint)

    def config(self) -> ServiceConfig:
        from opsdsl.lang.schema import did_you_mean

        document = self.document
        for key in document:
            if key not in TOP_LEVEL:
                raise self.fail((key,), "unknown key", did_you_mean(key, TOP_LEVEL) or _known(TOP_LEVEL))
        values: dict[str, Any] = {}
        for table, keys in TABLES.items():
            where: KeyPath = (table,) if table else ()
            found = document.get(table, {}) if table else {k: v for k, v in document.items() if k in keys}
            if table and not isinstance(found, dict):
                raise self.fail(where, f"a table ([{table}]), not {_kind(found)}")
            for key, value in found.items():
                if key not in keys:
                    raise self.fail((*where, key), "unknown key", did_you_mean(key, list(keys)) or _known(keys))
                wanted = keys[key](value)
                if wanted is not None:
                    raise self.fail((*where, key), f"must be {wanted}, not {_shown(value)}")
                values[f"{table}.{key}" if table else key] = value
        limits = {k: v for k, v in document.get("limits", {}).items()}
        packs, policies, plans = self.pack_files(values)
        signing_key, passphrase_file = self.signing(values)
        state_dir = self.path(values.get("state_dir"))
        if signing_key is not None and state_dir is not None:
            refuse_key_inside(signing_key, state_dir, lambda p: self.fail(("signing", "key"), p))
        if values.get("intake.accept_legacy_signatures") and not values.get("intake.hmac_secret_file"):
            raise self.fail(("intake", "accept_legacy_signatures"), "needs hmac_secret_file in [intake]")
        if values.get("auth.trusted_proxies") and not values.get("auth.trusted_user_header"):
            raise self.fail(("auth", "trusted_proxies"), "needs trusted_user_header in [auth]")
        return ServiceConfig(
            origin=self.origin,
            state_dir=state_dir,
            database=values.get("database"),
            public_url=values.get("public_url"),
            log_format=values.get("log_format"),
            escalation_url=values.get("escalation_url"),
            host=values.get("listen.host"),
            port=values.get("listen.port"),
            packs=packs,
            policies=policies,
            plans=plans,
            trust=self.path(values.get("packs.trust")),
            environment=values.get("packs.environment"),
            params=self.params(),
            secrets=self.secrets(),
            signing_key=signing_key,
            passphrase_env=values.get("signing.passphrase_env"),
            passphrase_file=passphrase_file,
            token_file=self.path(values.get("intake.token_file")),
            hmac_secret_file=self.path(values.get("intake.hmac_secret_file")),
            accept_legacy_signatures=values.get("intake.accept_legacy_signatures"),
            insecure_no_auth=values.get("intake.insecure_no_auth"),
            metrics_no_auth=values.get("intake.metrics_no_auth"),
            trusted_user_header=values.get("auth.trusted_user_header"),
            trusted_proxies=tuple(values["auth.trusted_proxies"]) if "auth.trusted_proxies" in values else None,
            notifiers=self.notifiers(),
            escalation=self.escalation(),
            follow_ups=self.follow_ups(),
            limits=limits,
            text=self.text,
        )

    def path(self, text: str | None) -> Path | None:
        """A path of the file, relative to the file's folder; `~` is the user's home."""
        if text is None:
            return None
        return self.folder / Path(text).expanduser()

    def existing(self, where: KeyPath, text: str, folder_ok: bool) -> Path:
        """`text` as a path that exists (a regular file, or a folder where allowed)."""
        from opsdsl.files import not_regular

        path = self.path(text)
        assert path is not None
        try:
            kind = not_regular(os.stat(path).st_mode)
        except OSError as error:
            raise self.fail(where, f"{text}: {error.strerror}") from None
        except ValueError as error:
            raise self.fail(where, f"{text!r}: {error}") from None
        if kind is not None and not (folder_ok and kind == "a directory"):
            raise self.fail(where, f"{text} is {kind}, not a regular file")
        return path

    def pack_files(self, values: dict[str, Any]) -> tuple[tuple[Path, ...], tuple[Path, ...] | None, tuple[Path, ...]]:
        from opsdsl.build.pipeline import looks_like_policy_pack

        packs: list[Path] = []
        for index, text in enumerate(values.get("packs.paths", [])):
            where = ("packs", "paths", index)
            path = self.existing(where, text, folder_ok=True)
            if path.is_dir():
                found = [p for p in self.folder_packs(where, path) if not looks_like_policy_pack(p)]
                if not found:
                    raise self.fail(where, f"{text} holds no pack (kind: Pack) files")
                stranger = next((p for p in found if not looks_like_pack(p)), None)
                if stranger is not None:
                    raise self.fail(
                        where,
                        f"{stranger} in this folder is not an opsdsl pack (no `kind: Pack`)",
                        "keep a folder of packs for packs and policy packs only, or name the pack files",
                    )
                packs += found
            elif looks_like_policy_pack(path):
                raise self.fail(where, f"{text} is a policy pack", "name it in [packs] policies")
            else:
                packs.append(path)
        seen: dict[Path, int] = {}
        for index, pack in enumerate(packs):
            if pack.resolve() in seen:
                raise self.fail(("packs", "paths"), f"{pack} is named twice (directly or in a folder)")
            seen[pack.resolve()] = index
        policies = None
        if "packs.policies" in values:
            policies = []
            for index, text in enumerate(values["packs.policies"]):
                where = ("packs", "policies", index)
                path = self.existing(where, text, folder_ok=True)
                if path.is_dir():
                    policies += [p for p in self.folder_packs(where, path) if looks_like_policy_pack(p)]
                else:
                    policies.append(path)
        plans = [self.existing(("packs", "plans", i), t, False) for i, t in enumerate(values.get("packs.plans", []))]
        return tuple(packs), None if policies is None else tuple(policies), tuple(plans)

    def folder_packs(self, where: KeyPath, folder: Path) -> list[Path]:
        """The pack files in `folder` as `opsdsl lint` finds them, sorted; refused when the
        folder is not one of packs (more than MAX_FOLDER_ENTRIES entries: / or /etc)."""
        from opsdsl.lang.loader import discover

        seen = 0
        for _root, dirs, files in os.walk(folder):  # links to folders are not followed: no loops
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            seen += len(dirs) + len(files)
            if seen > MAX_FOLDER_ENTRIES:
                raise self.fail(
                    where,
                    f"{folder} holds more than {MAX_FOLDER_ENTRIES} files and folders; it is not a folder of packs",
                    "name the folder that holds the pack files",
                )
        return discover([folder])

    def signing(self, values: dict[str, Any]) -> tuple[Path | None, Path | None]:
        if "signing.key" not in values:
            for key in ("passphrase_env", "passphrase_file"):
                if f"signing.{key}" in values:
                    raise self.fail(("signing", key), "needs key in [signing]")
            return None, None
        if "signing.passphrase_env" in values and "signing.passphrase_file" in values:
            raise self.fail(("signing", "passphrase_file"), "give passphrase_env or passphrase_file, not both")
        # read (and so checked) when the service starts: `load_signing_key`
        return self.path(values["signing.key"]), self.path(values.get("signing.passphrase_file"))

    def params(self) -> dict[str, dict[str, Any]]:
        params = self.document.get("params", {})
        if not isinstance(params, dict):
            raise self.fail(("params",), f"a table ([params.PACK]), not {_kind(params)}")
        for pack, table in params.items():
            if not isinstance(table, dict):
                raise self.fail(("params", pack), f"a table of params ([params.{_quoted(pack)}]), not {_kind(table)}")
        return params

    def secrets(self) -> dict[str, tuple[str, str]]:
        table = self.document.get("secrets", {})
        if not isinstance(table, dict):
            raise self.fail(("secrets",), f"a table ([secrets]), not {_kind(table)}")
        references = {}
        for name, value in table.items():
            wanted = _secret_source(value)
            if wanted is not None:
                raise self.fail(("secrets", name), f"must be {wanted}, not {_shown(value)}")
            kind, _, where = value.partition(":")
            references[name] = (kind, str(self.path(where)) if kind == "file" else where)
        return references

    def follow_ups(self) -> Any:
        """`[follow_ups]`: the tracker the server opens incidents' follow-ups in, or None."""
        table = self.document.get("follow_ups")
        if table is None:
            return None
        from opsdsl.runtime.incidents import tracker_from_table

        if not isinstance(table, dict):
            raise self.fail(("follow_ups",), "a table ([follow_ups])")
        try:
            return tracker_from_table(table)
        except UsageError as error:  # "follow_ups.repo: …" or "follow_ups: repo …": point at the key
            key, _, problem = error.message.partition(": ")
            named = key.split(".", 1)[1] if "." in key else next((k for k in table if problem.startswith(k)), None)
            raise self.fail(("follow_ups", named) if named in table else ("follow_ups",), problem) from None

    def escalation(self) -> Any:
        """`[escalation]`: response times and levels (runtime/escalation.py), or None."""
        table = self.document.get("escalation")
        if table is None:
            return None
        from opsdsl.runtime.escalation import policy_from_table

        if not isinstance(table, dict):
            raise self.fail(("escalation",), "a table ([escalation])")
        from opsdsl.runtime.announce_text import notifiers_from_specs

        names = [notifier.name for notifier in notifiers_from_specs(self.notifiers())]
        try:
            return policy_from_table(table, names)
        except UsageError as error:  # "escalation.levels[1].notifiers: …": point at that key
            key, _, problem = error.message.partition(": ")
            path = tuple(int(part) if part.isdigit() else part for part in re.findall(r"[A-Za-z_-]+|\d+", key))
            raise self.fail(path or ("escalation",), problem) from None

    def notifiers(self) -> tuple[dict[str, Any], ...]:
        found = self.document.get("notifiers", [])
        if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
            raise self.fail(("notifiers",), "an array of tables ([[notifiers]])")
        notifier_problem = _notifier_check()
        for index, spec in enumerate(found):
            problem = notifier_problem(spec) if notifier_problem is not None else None
            if problem is not None:  # point at the key the problem names, if it names one
                named = [k for k in spec if problem.startswith(f"{k}:") or repr(k) in problem or f"`{k}`" in problem]
                raise self.fail(("notifiers", index, *named[:1]), problem)
        return tuple(found)


_PACK_HINT = re.compile(rb"^(?:kind:\s*['\"]?Pack['\"]?\s*(?:#.*)?$|pack\s)", re.MULTILINE)


def looks_like_pack(path: Path) -> bool:
    """A cheap first guess, like `looks_like_policy_pack`: YAML `kind: Pack` or an .ops `pack`
    block in the first 64 KiB (the compiler decides)."""
    from opsdsl.lang.untrusted import read_head

    head = read_head(path, 65536)
    return head is not None and bool(_PACK_HINT.search(head))


def _notifier_check() -> Callable[[dict[str, Any]], str | None] | None:
    """The announcer's check of one `[[notifiers]]` table (None where it is not installed)."""
    try:
        from opsdsl.runtime.announce import notifier_problem
    except ImportError:
        return None
    return notifier_problem


def _known(keys: Mapping[str, Any] | Sequence[str]) -> str:
    return "known keys: " + ", ".join(sorted(keys))


def _kind(value: Any) -> str:
    kinds = {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a float"}
    return kinds.get(type(value), "a date or time")


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, dict) else "a table"
    return text if len(text) <= 60 else text[:60] + "…"


# ---- the signing key --------------------------------------------------------------------------


def refuse_key_inside(key: Path, state: Path, fail: Callable[[str], Exception]) -> None:
    """A signing key in the state directory is refused: whoever can write the state could
    replace the key that vouches for it."""
    if key.resolve().is_relative_to(state.resolve()):
        raise fail(
            f"{key} is inside the state directory {state}: keep the signing key outside it, where whoever"
            " can write the state cannot replace it"
        )


def load_signing_key(config: ServiceConfig, state: Path, environ: Mapping[str, str] | None = None):
    """The Ed25519 key the file's [signing] table names, as a `state_config.Signer` for the
    runtime; refused when it is inside `state`, readable by others, or the passphrase is
    missing or wrong. A production state directory keeps its own key: a different one here
    would sign checkpoints `ledger verify` does not trust, so it is refused too."""
    from opsdsl.build.signing import KeyFileError, keyid, load_private_key, private_key_exposure
    from opsdsl.lang.untrusted import read_limited
    from opsdsl.runtime.state_config import KeyRefused, Signer, read_config

    assert config.signing_key is not None
    environ = os.environ if environ is None else environ
    refuse_key_inside(config.signing_key, state, lambda problem: config.error(("signing", "key"), problem))
    exposed = private_key_exposure(config.signing_key)
    if exposed is not None:
        raise KeyRefused(exposed)
    passphrase: bytes | None = None
    if config.passphrase_env is not None:
        value = environ.get(config.passphrase_env, "")
        if not value:
            raise config.error(("signing", "passphrase_env"), f"${config.passphrase_env} is not set or empty")
        passphrase = os.fsencode(value)
    elif config.passphrase_file is not None:
        exposed = private_key_exposure(config.passphrase_file)
        if exposed is not None:
            raise KeyRefused(exposed.replace("private key", "passphrase file"))
        data, problem = read_limited(config.passphrase_file, 4096)
        if data is None or not data.strip(b"\r\n"):
            raise config.error(("signing", "passphrase_file"), f"cannot read a passphrase: {problem or 'empty'}")
        passphrase = data.rstrip(b"\r\n")
    try:
        key = load_private_key(config.signing_key, passphrase)
    except KeyFileError as error:
        raise config.error(("signing", "key"), error.message) from None
    state_config = read_config(state)
    if state_config.production and state_config.public_key:
        from opsdsl.build.signing import load_public_key

        if keyid(load_public_key(state_config.public_key)) != keyid(key.public_key()):
            raise config.error(
                ("signing", "key"),
                f"{state} is a production state directory signed by another key (its config.json)",
                "name the key given to `opsdsl init --production --signing-key`",
            )
    return Signer(key, "configured", state_config.mode)


# ---- params ---------------------------------------------------------------------------------


def param_text(value: Any) -> str | None:
    """A TOML, JSON or YAML value as the text `--param` would carry (None: no such text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, (list, dict)):
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return None
    return None  # a date or a time: no param type takes one


def read_params_file(path: Path) -> dict[str, str]:
    """A `--params-file`: a YAML or JSON mapping of param names to values (TOML when it ends
    in .toml), read as untrusted input (a regular file, at most 1 MiB, YAML without aliases);
    the values as `--param` would give them."""
    from opsdsl.lang.untrusted import decode, read_limited

    where = f"--params-file {path}"
    data, problem = read_limited(path, MAX_PARAMS_FILE_BYTES)
    if data is None:
        raise UsageError(f"{where}: {problem}")
    text = decode(data, where)
    if path.suffix == ".toml":
        try:
            document: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            line, col, what = _toml_problem(str(error))
            raise UsageError(f"{where}:{line}:{col}: not valid TOML: {what}") from None
    else:
        document = _yaml_mapping(text, where)
    if not isinstance(document, dict):
        raise UsageError(f"{where}: a mapping of param names to values, not {_kind(document)}")
    given = {}
    for name, value in document.items():
        text_value = param_text(value)
        if not isinstance(name, str) or text_value is None:
            raise UsageError(f"{where}: {name!r}: a param's value is a string, number, boolean, list or map")
        given[name] = text_value
    return given


def _yaml_mapping(text: str, where: str) -> Any:
    import yaml

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):  # aliases multiply a small file into a huge value
                raise UsageError(f"{where}: YAML aliases (*name) are not accepted in a params file")
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{where}: not valid YAML or JSON: {error}") from None
    except RecursionError:
        raise UsageError(f"{where}: nested too deeply") from None


def pack_params(
    plans: Sequence[Any],
    given: Mapping[str, str],
    secrets: Any,
    config: ServiceConfig | None = None,
    environment: str | None = None,
) -> list[dict[str, Any]]:
    """Each plan's param values: its declared defaults, overridden by the config file's
    `[params.PACK]`, then `[params.PACK.ENV]` (ENV: `environment`), then `given` (from
    `--params-file` and `--param`, which apply to every pack that declares the name)."""
    from opsdsl.runtime import runner
    from opsdsl.runtime.inputs import coerce, refuse_secret_params

    names = [plan.payload["pack"]["name"] for plan in plans]
    declared_anywhere: set[str] = set()
    if config is not None:
        from opsdsl.lang.schema import did_you_mean

        for pack in config.params:
            if pack not in names:
                hint = did_you_mean(pack, names) or f"the packs served are: {', '.join(names) or 'none'}"
                raise config.error(("params", pack), "no pack of this name is served", hint)
    values = []
    for plan, name in zip(plans, names, strict=True):
        declared = plan.payload.get("params") or {}
        declared_anywhere |= set(declared)
        chosen: dict[str, str] = {}
        if config is not None:
            chosen.update(_file_params(config, name, declared, environment, coerce))
        mine = {k: v for k, v in given.items() if k in declared}
        refuse_secret_params(plan.payload, mine)
        chosen.update(mine)
        values.append(runner.resolve_params(plan.payload, chosen, secrets))
    unknown = sorted(set(given) - declared_anywhere)
    if unknown:
        raise UsageError(f"--param {unknown[0]}: no pack served declares this param (packs: {', '.join(names)})")
    return values


def _file_params(
    config: ServiceConfig, pack: str, declared: dict[str, Any], environment: str | None, coerce: Callable
) -> dict[str, str]:
    """The file's params for `pack` as text, checked here so that errors name their line:
    a key of `[params.PACK]` is a param, or (a table) the params of one environment."""
    from opsdsl.lang.schema import did_you_mean

    table = config.params.get(pack, {})
    base: dict[str, str] = {}
    chosen: dict[str, str] = {}
    for key, value in table.items():
        if key in declared:
            base[key] = _file_param(config, ("params", pack, key), declared[key], value, coerce)
        elif isinstance(value, dict):  # [params.PACK.ENV]
            for name, item in value.items():
                path = ("params", pack, key, name)
                if name not in declared:
                    raise config.error(path, f"pack {pack} declares no such param", _param_hint(name, declared))
                text = _file_param(config, path, declared[name], item, coerce)
                if key == environment:
                    chosen[name] = text
        else:
            hint = did_you_mean(key, list(declared)) or _param_hint(key, declared)
            raise config.error(("params", pack, key), f"pack {pack} declares no such param", hint)
    return {**base, **chosen}


def _param_hint(name: str, declared: dict[str, Any]) -> str:
    from opsdsl.lang.schema import did_you_mean

    return did_you_mean(name, list(declared)) or f"its params: {', '.join(declared) or 'none'}"


def _file_param(config: ServiceConfig, path: KeyPath, spec: dict[str, Any], value: Any, coerce: Callable) -> str:
    if spec.get("secret"):
        raise config.error(path, "a secret param's value does not belong in this file", "name its source in [secrets]")
    text = param_text(value)
    if text is None:
        raise config.error(path, f"must be a {spec['type']}, not {_shown(value)}")
    try:
        checked = coerce(text, spec["type"], "value")
    except UsageError as error:
        raise config.error(path, error.message.removeprefix("value: ")) from None
    if spec.get("enum") and checked not in spec["enum"]:
        raise config.error(path, f"{_shown(value)} is not one of {spec['enum']}")
    return text


# ---- the file and the command line ---------------------------------------------------------


def merged_settings(config: ServiceConfig | None, flags: Mapping[str, Any], given: Sequence[str]) -> dict[str, Any]:
    """The command's settings by flag name: a flag given on the command line (`given`), else
    the file's value, else the flag's default. A repeatable flag replaces the file's list;
    `--secret` and `--param` override it name by name (see `build_service`, `pack_params`)."""
    merged = dict(flags)
    if config is None:
        return merged
    from_file: dict[str, Any] = {
        "packs": config.packs or None,
        "plans": config.plans or None,
        "policies": config.policies,
        "trust": config.trust,
        "environment": config.environment,
        "escalation_url": config.escalation_url,
        "state_dir": config.state_dir,
        "host": config.host,
        "port": config.port,
        "token_file": config.token_file,
        "hmac_secret_file": config.hmac_secret_file,
        "insecure_no_auth": config.insecure_no_auth,
        "metrics_no_auth": config.metrics_no_auth,
        "accept_legacy_signatures": config.accept_legacy_signatures,
        "trusted_user_header": config.trusted_user_header,
        "trusted_proxies": config.trusted_proxies,
        "public_url": config.public_url,
        "log_format": config.log_format,
        **config.limits,
    }
    for name, value in from_file.items():
        if name in merged and name not in given and value is not None:
            merged[name] = value
    return merged
