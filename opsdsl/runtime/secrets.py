"""Secret values: where they come from, and keeping them out of everything we write.

A pack reads a secret as `${{ secrets.NAME }}`. Its value is looked up, in order, from
an explicit `--secret NAME=env:VAR` / `--secret NAME=file:PATH` reference, the
environment variable `OPSDSL_SECRET_NAME` (upper-cased), and the file
`STATE_DIR/secrets/NAME`. Values of params declared `secret: true` are secrets too.

Every value that reaches the ledger, the state database, logs, evidence or the RCA passes
through `Redactor`, which replaces each known secret value with `***`, and also the piece
of one left where a text was cut short (an output kept up to its limit, a message
shortened with `…`): a secret's head at the end of a text, its tail at the start.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from opsdsl.errors import OpsdslError, UsageError

MASK = "***"
ENV_PREFIX = "OPSDSL_SECRET_"
FRAGMENT_MIN = 6  # characters of a secret's head or tail masked at a cut (fewer for short secrets)
CUT_MARKS = ("\u2026", "\ufffd")  # "…" ends a shortened text; U+FFFD a character cut in half


class SecretError(OpsdslError):
    """A secret a step needs has no value; the step fails with this message (an OpsdslError,
    so the expression language passes it through as it is)."""


def parse_references(specs: Iterable[str]) -> dict[str, tuple[str, str]]:
    """`NAME=env:VAR` / `NAME=file:PATH` command-line references, by name."""
    references: dict[str, tuple[str, str]] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        kind, colon, where = source.partition(":")
        if not sep or not name or not colon or kind not in ("env", "file") or not where:
            raise UsageError(f"--secret {spec!r}: write NAME=env:VARIABLE or NAME=file:PATH")
        references[name] = (kind, where)
    return references


class Secrets(Mapping[str, str]):
    """Secret values by name, resolved lazily from references, the environment and files."""

    def __init__(self, state_dir: Path, references: Mapping[str, tuple[str, str]] | None = None) -> None:
        self._folder = state_dir / "secrets"
        self._references = dict(references or {})
        self._values: dict[str, str] = {}
        self.redactor = Redactor()

    def __getitem__(self, name: str) -> str:
        if name not in self._values:
            value = self._resolve(name)
            if value is None:
                raise KeyError(name)
            self._values[name] = value
            self.redactor.add(value)
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def require(self, name: str) -> str:
        try:
            return self[name]
        except KeyError:
            raise SecretError(
                f"secret `{name}` has no value: set {ENV_PREFIX}{name.upper()}, write it to "
                f"{self._folder / name}, or pass --secret {name}=env:VARIABLE"
            ) from None

    def _resolve(self, name: str) -> str | None:
        reference = self._references.get(name)
        if reference is not None:
            kind, where = reference
            if kind == "env":
                return os.environ.get(where)
            return _read_secret_file(Path(where))
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            return value
        if "/" in name or name.startswith("."):
            return None
        return _read_secret_file(self._folder / name)


def _read_secret_file(path: Path) -> str | None:
    """A secret file's text; None when there is none. Only a regular file is read (a FIFO
    would block the run), at most 1 MiB, as UTF-8."""
    from opsdsl.lang.untrusted import read_limited

    try:
        if not path.exists() or path.is_dir():
            return None
    except OSError:
        return None
    data, problem = read_limited(path, 1024 * 1024)
    if data is None:
        raise SecretError(f"cannot read secret file {path}: {problem}")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretError(f"cannot read secret file {path}: not UTF-8") from None


class SecretsView(Mapping[str, str]):
    """`secrets` as expressions see it: reading a missing one fails the step clearly."""

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets

    def __getitem__(self, name: str) -> str:
        return self._secrets.require(name)

    def __iter__(self):
        return iter(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __contains__(self, name: object) -> bool:
        # Every name "exists": reading a missing one raises SecretError, whose message says
        # where to put the value, rather than the evaluator's bare "no such key".
        return isinstance(name, str)


class Redactor:
    """Replaces known secret values with `***` in strings, bytes and JSON-like data.

    A text cut at a limit before it was redacted may end with a secret's first characters
    (or, kept from the end, start with its last ones), which no longer match the whole
    value. So at every cut boundary (the start and end of the text, and either side of
    `…` or U+FFFD) a secret's head or tail of at least `fragment_floor` characters is
    masked too. A text that merely ends like the start of a secret loses those characters:
    the price of never keeping a piece of one.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        self._encoded: list[bytes] = []
        for value in values:
            self.add(value)

    def add(self, value: str) -> None:
        """Know `value`, and its percent-encoded forms: a secret rendered into a URL is
        encoded there, and error messages quote the URL."""
        for form in dict.fromkeys((value, quote(value, safe=""), quote(value), quote_plus(value))):
            if form and form not in self._values:
                self._values.append(form)
        self._values.sort(key=len, reverse=True)  # longest first: a secret containing another
        self._encoded = [known.encode("utf-8") for known in self._values]

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return _mask_cut_fragments(text, self._values, MASK, CUT_MARKS)

    def bytes(self, data: bytes) -> bytes:
        mask = MASK.encode()
        for encoded in self._encoded:
            if encoded in data:
                data = data.replace(encoded, mask)
        return _mask_cut_fragments(data, self._encoded, mask, tuple(mark.encode("utf-8") for mark in CUT_MARKS))

    def data(self, value: Any) -> Any:
        """A copy of JSON-like `value` with secrets masked in every string (keys too)."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(item) for item in value]
        return value


def fragment_floor(secret_length: int) -> int:
    """The shortest head or tail of a secret masked at a cut: FRAGMENT_MIN, or half of a
    short secret (at least 3 characters: shorter pieces say little and match too much)."""
    return min(FRAGMENT_MIN, max(3, secret_length // 2))


def _mask_cut_fragments(data: Any, secrets: list[Any], mask: Any, marks: tuple[Any, ...]) -> Any:
    """`data` (str or bytes) with every secret head ending at a cut and every secret tail
    starting at one replaced by `mask`."""
    if not secrets or not data:
        return data
    ends, starts = {len(data)}, {0}
    for mark in marks:
        at = data.find(mark)
        while at != -1:
            ends.add(at)
            starts.add(at + len(mark))
            at = data.find(mark, at + len(mark))
    spans = []
    for secret in secrets:
        floor = fragment_floor(len(secret))
        if len(secret) <= floor:
            continue
        for end in ends:
            size = _head_before(data, end, secret, floor)
            if size:
                spans.append((end - size, end))
        for start in starts:
            size = _tail_after(data, start, secret, floor)
            if size:
                spans.append((start, start + size))
    if not spans:
        return data
    pieces, done = [], 0
    for begin, end in sorted(spans):
        if end <= done:
            continue
        pieces.append(data[done : max(begin, done)])
        pieces.append(mask)
        done = end
    pieces.append(data[done:])
    return data[:0].join(pieces)


def _head_before(data: Any, end: int, secret: Any, floor: int) -> int:
    """The length of the longest head of `secret` (at least `floor`) that `data` has just
    before `end`, else 0."""
    if end < floor or data[end - floor : end] not in secret:
        return 0
    for size in range(min(len(secret) - 1, end), floor - 1, -1):
        if data[end - size : end] == secret[:size]:
            return size
    return 0


def _tail_after(data: Any, start: int, secret: Any, floor: int) -> int:
    """The length of the longest tail of `secret` (at least `floor`) that `data` has from
    `start` on, else 0."""
    if len(data) - start < floor or data[start : start + floor] not in secret:
        return 0
    for size in range(min(len(secret) - 1, len(data) - start), floor - 1, -1):
        if data[start : start + size] == secret[-size:]:
            return size
    return 0
