"""The console's sign-in: a person's API token exchanged once for a signed session cookie.

The cookie holds `{name, token fingerprint, session id, CSRF token, expiry}` as base64url
JSON and an HMAC-SHA256 of it under a key made once in the state directory
(`console.key`, 0600). Nothing else is kept for a session, so any number of server
restarts keep people signed in, yet:

- the cookie names the token it was made from (a fingerprint of its stored hash): a
  revoked or replaced token ends every session made from it at the next request, and
  each request reads the person's *current* role and groups from the `users` table;
- signing out records the session id (table `console_signed_out`, until its expiry), so
  a copy of the cookie is dead too;
- the CSRF token is per session, sent back in a hidden field of every form.

People behind the trusted single-sign-on proxy need no cookie (the proxy names them on
every request, `serve.auth`); their CSRF token is an HMAC of their name under the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_FILE = "console.key"
KEY_BYTES = 32
COOKIE = "opsdsl_console"
SIGNIN_COOKIE = "opsdsl_console_signin"
SESSION_SECONDS = 12 * 3600  # an on-call shift; then sign in again
SIGNIN_SECONDS = 600  # the sign-in form's own token
MAX_COOKIE = 1024

SIGNED_OUT_DDL = """CREATE TABLE IF NOT EXISTS console_signed_out (
    sid TEXT PRIMARY KEY,
    until REAL NOT NULL
)"""


def load_key(state: Path) -> bytes:
    """The console's signing key: made once (32 random bytes, mode 0600), then read."""
    path = state / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) < KEY_BYTES:
            raise OSError(f"{path}: shorter than {KEY_BYTES} bytes; delete it to make a new key") from None
        return data
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(token_hash: str) -> str:
    """What a cookie keeps of the token it was made from (never the token or its stored hash)."""
    return hashlib.sha256(b"console:" + token_hash.encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True)
class Session:
    name: str
    token: str  # fingerprint(token hash)
    sid: str
    csrf: str
    expires: float


def issue(key: bytes, name: str, token_hash: str, now: float | None = None) -> tuple[str, Session]:
    """(cookie value, session) for `name`, signed in with the token whose stored hash is `token_hash`."""
    now = time.time() if now is None else now
    session = Session(
        name,
        fingerprint(token_hash),
        _b64(secrets.token_bytes(16)),
        _b64(secrets.token_bytes(24)),
        now + SESSION_SECONDS,
    )
    payload = _b64(
        json.dumps(
            {"n": session.name, "t": session.token, "s": session.sid, "c": session.csrf, "e": round(session.expires)},
            separators=(",", ":"),
        ).encode()
    )
    return f"{payload}.{_sign(key, payload)}", session


def read(key: bytes, value: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value carries, if its signature holds and it has not expired."""
    if not value or len(value) > MAX_COOKIE or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    if not hmac.compare_digest(signature, _sign(key, payload)):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = Session(str(data["n"]), str(data["t"]), str(data["s"]), str(data["c"]), float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= (time.time() if now is None else now):
        return None
    return session


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, b"session:" + payload.encode("ascii"), hashlib.sha256).digest())


def proxy_csrf(key: bytes, name: str) -> str:
    """The CSRF token of a person the trusted proxy names (they have no session cookie)."""
    return _b64(hmac.new(key, b"proxy-csrf:" + name.encode(), hashlib.sha256).digest())


def signin_token(key: bytes, now: float | None = None) -> tuple[str, str]:
    """(cookie value, form value) guarding the sign-in form itself (a double submit, signed)."""
    nonce = _b64(secrets.token_bytes(16))
    expires = str(round((time.time() if now is None else now) + SIGNIN_SECONDS))
    signed = _b64(hmac.new(key, f"signin:{nonce}:{expires}".encode(), hashlib.sha256).digest())
    return f"{nonce}.{expires}", signed


def signin_ok(key: bytes, cookie: str | None, form_value: Any, now: float | None = None) -> bool:
    """Whether the sign-in form came back with the token its own page set."""
    if not cookie or not isinstance(form_value, str) or len(cookie) > 200 or cookie.count(".") != 1:
        return False
    nonce, expires = cookie.split(".")
    if not expires.isdigit() or int(expires) <= (time.time() if now is None else now):
        return False
    signed = _b64(hmac.new(key, f"signin:{nonce}:{expires}".encode(), hashlib.sha256).digest())
    return hmac.compare_digest(signed, form_value)


def same(a: Any, b: str) -> bool:
    """Constant-time equality of a submitted value and the expected one."""
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())
