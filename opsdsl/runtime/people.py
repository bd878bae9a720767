"""People of a state directory: who they are, what their role lets them do, their API tokens.

`opsdsl users add NAME --role ROLE` writes a row to the `users` table (created on first
use) and prints a token once; only its SHA-256 is stored. A token is 32 random bytes, so
a fast hash is enough: nobody can guess one to match a stolen hash, which is what slow
password hashes protect against. The server (`opsdsl.serve.auth`) turns a bearer token,
or a trusted proxy's identity header, into a `Person`; the CLI's `--by NAME` becomes a
`Person` with `via="local"`, recorded as `local:NAME` because nothing authenticated it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.errors import UsageError
from opsdsl.lang.names import LOCAL_PREFIX, person_name, same_person_key

ROLES = ("viewer", "responder", "approver", "admin")
ACTS = ("read", "fire", "ack", "resume", "cancel", "approve", "decide", "admin")
VIAS = ("token", "proxy", "local")

# What each role may do; every role may do what the one before it may.
_GRANTS = {
    "viewer": frozenset({"read"}),
    "responder": frozenset({"read", "fire", "ack", "resume", "cancel"}),
    "approver": frozenset({"read", "fire", "ack", "resume", "cancel", "approve", "decide"}),
    "admin": frozenset(ACTS),
}

TOKEN_PREFIX = "opsdsl_"
TOKEN_BYTES = 32
# The whole token: the prefix and 43 url-safe base64 characters (32 bytes, unpadded).
_TOKEN_SHAPE = re.compile(r"opsdsl_[A-Za-z0-9_-]{43}")
# A user's name (after person_name's folding): plain ASCII, so that no two rows can look
# alike (Cyrillic "а" beside Latin "a"), and no `:` (`local:` and `group:` are ours).
_USER_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}")
_GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
GROUP_PREFIX = "group:"

_DDL = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    groups TEXT NOT NULL DEFAULT '[]',
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""


@dataclass(frozen=True)
class Person:
    """Someone acting on runs, and how we know who they are (`via`: token, proxy or local)."""

    name: str
    role: str
    groups: tuple[str, ...] = ()
    via: str = "local"

    @property
    def recorded(self) -> str:
        """The `by` the ledger keeps: `local:NAME` for a name nobody authenticated, else NAME."""
        return f"{LOCAL_PREFIX}{self.name}" if self.via == "local" else self.name

    def in_group(self, group: str) -> bool:
        return _group_key(group) in {_group_key(g) for g in self.groups}


def _group_key(text: str) -> str:
    """A group's name as compared: NFKC, case-folded, trimmed (`OnCall` is `oncall`)."""
    return unicodedata.normalize("NFKC", str(text)).casefold().strip()


def allowed(person: Person, act: str) -> bool:
    """Whether `person`'s role lets them do `act` (one of ACTS); an unknown role may do nothing."""
    if act not in ACTS:
        raise ValueError(f"unknown act {act!r}; one of {', '.join(ACTS)}")
    return act in _GRANTS.get(person.role, frozenset())


def roles_for(act: str) -> tuple[str, ...]:
    """The roles that may do `act`, for messages ("needs the role responder, approver or admin")."""
    return tuple(role for role in ROLES if act in _GRANTS[role])


def user_name(text: str, what: str = "NAME") -> str:
    """A user's canonical name (folded like every name in the ledger), or UsageError."""
    name = person_name(text, what)
    if not _USER_NAME.fullmatch(name):
        raise UsageError(
            f"{what} {name!r}: a user's name is 1 to 128 of a-z, 0-9 and . _ @ + - (an email address"
            " or a login), starting with a letter or digit"
        )
    return name


def group_name(text: str, what: str = "--group") -> str:
    name = person_name(text, what)
    if not _GROUP_NAME.fullmatch(name):
        raise UsageError(f"{what} {name!r}: a group's name is 1 to 64 of a-z, 0-9 and . _ -")
    return name


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def may_approve(person: Person, approvers: Iterable[str]) -> bool:
    """Whether `person` is one of `approvers` (names, or `group:NAME`); an empty list admits anyone."""
    listed = list(approvers)
    if not listed:
        return True
    key = same_person_key(person.name)
    for entry in listed:
        text = str(entry).strip()
        if text[: len(GROUP_PREFIX)].casefold() == GROUP_PREFIX:  # `Group:OnCall` too
            if person.in_group(text[len(GROUP_PREFIX) :]):
                return True
        elif same_person_key(text) == key:
            return True
    return False


class People:
    """The `users` table of one state database (a `runtime.store.Store`)."""

    def __init__(self, store: Any, clock: Any = time.time) -> None:
        self.store = store
        self.clock = clock
        store.conn.execute(_DDL)  # one statement: never commits a caller's open transaction as executescript would

    def add(self, name: str, role: str, groups: Iterable[str] = ()) -> str:
        """Add a person (or re-admit a revoked one) and return their new token; only its hash is kept."""
        name = user_name(name)
        if role not in ROLES:
            raise UsageError(f"--role {role!r}: one of {', '.join(ROLES)}")
        folded = tuple(sorted({group_name(g) for g in groups}))
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT revoked_at FROM users WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise UsageError(
                    f"user {name} exists; `opsdsl users revoke {name}` first to give them a new token or role"
                )
            now = self.clock()
            conn.execute(
                "INSERT OR REPLACE INTO users (name, role, groups, token_hash, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (name, role, json.dumps(folded), token_digest(token), now),
            )
            self.store.ledger.append(E.USER_ADDED, None, {"name": name, "role": role, "groups": list(folded)}, ts=now)
        return token

    def list(self) -> list[dict[str, Any]]:
        """Every user, revoked ones included, by name; never a token or its hash."""
        rows = self.store.conn.execute("SELECT name, role, groups, created_at, revoked_at FROM users ORDER BY name")
        return [
            {
                "name": r[0],
                "role": r[1],
                "groups": json.loads(r[2]),
                "created_at": r[3],
                "revoked_at": r[4],
                "active": r[4] is None,
            }
            for r in rows
        ]

    def revoke(self, name: str) -> bool:
        """Revoke `name`'s token (their row stays, for the record); False if it was revoked already."""
        name = user_name(name)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT revoked_at FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UsageError(f"no user {name} (see `opsdsl users list`)")
            if row[0] is not None:
                return False
            now = self.clock()
            conn.execute("UPDATE users SET revoked_at = ? WHERE name = ?", (now, name))
            self.store.ledger.append(E.USER_REVOKED, None, {"name": name}, ts=now)
        return True

    def authenticate(self, token: object) -> Person | None:
        """The active person whose token this is, else None (malformed, unknown or revoked)."""
        if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token):
            return None  # before hashing: a huge or odd value costs nothing
        digest = token_digest(token)
        row = self.store.conn.execute(
            "SELECT name, role, groups, token_hash, revoked_at FROM users WHERE token_hash = ?", (digest,)
        ).fetchone()
        if row is None or not hmac.compare_digest(row[3], digest) or row[4] is not None:
            return None
        return Person(row[0], row[1], tuple(json.loads(row[2])), "token")

    def get(self, name: str) -> Person | None:
        """The active user of that name (any spelling of it), else None; `via` is left to the caller."""
        try:
            name = user_name(name)
        except UsageError:
            return None
        row = self.store.conn.execute(
            "SELECT name, role, groups FROM users WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        return None if row is None else Person(row[0], row[1], tuple(json.loads(row[2])), "local")

    def revoked(self, name: str) -> bool:
        """Whether `name` has a row whose token was revoked."""
        try:
            name = user_name(name)
        except UsageError:
            return False
        row = self.store.conn.execute("SELECT revoked_at FROM users WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] is not None


def local_person(store: Any, by: str) -> Person:
    """The person behind a CLI `--by NAME`: a local user of the state directory, not authenticated.

    A `users` row of that name lends its role and groups (so `group:` approvers and roles
    work from the CLI as over the API); without one, the name acts as an admin, as anyone
    who can write the state directory can. A revoked user is refused.
    """
    name = person_name(by)
    if name.startswith(LOCAL_PREFIX):  # `--by local:alice` is alice
        name = person_name(name[len(LOCAL_PREFIX) :])
    people = People(store)
    if people.revoked(name):
        raise UsageError(f"--by {name}: that user was revoked (`opsdsl users list`)")
    known = people.get(name)
    if known is not None:
        return Person(known.name, known.role, known.groups, "local")
    return Person(name, "admin", (), "local")
