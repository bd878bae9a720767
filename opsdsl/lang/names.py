"""People's names as the ledger keeps them: one spelling per person, nothing that can forge a line.

Every name that reaches the ledger (`approve --by`, `decide --by`, `ack --by`, `resume
--by`, review authors, approvers listed in a pack) goes through `person_name`, so that
`carol`, ` Carol `, `CAROL` and `carol<U+200B>` are one person for the two-person rule,
and a name can never carry a newline or a terminal escape into the live view or rca.md.
Pure text (in lang/ because packs name approvers too): it imports nothing of the package but its errors.
"""

from __future__ import annotations

import unicodedata

from opsdsl.errors import UsageError

MAX_NAME_LENGTH = 200
# How the ledger marks a name nobody authenticated (the CLI's `--by`): `local:alice` is alice.
LOCAL_PREFIX = "local:"

# Bidirectional overrides, embeddings and isolates: they reorder how a line reads
# ("alice" shown where "ecila" is stored). Refused rather than dropped: a name holding one
# was written to mislead.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def person_name(text: str, what: str = "--by") -> str:
    """`text` as one person's canonical name; UsageError (exit 2) if it cannot be one.

    In order: refuse control characters (U+0000–U+001F, U+007F–U+009F: newlines, ANSI
    escapes, NUL) and bidi overrides; then NFKC, drop format characters (Unicode category
    Cf: zero-width spaces and joiners, soft hyphens, BOMs), case-fold, collapse inner white
    space to one space and trim; refuse what is left if it is empty or over
    MAX_NAME_LENGTH characters. NFKC and case-folding run twice, because each can undo the
    other's normal form ("ǅ", "ﬃ").
    """
    if not isinstance(text, str):
        raise UsageError(f"{what}: a name is text, not {type(text).__name__}")
    bad = _first_forbidden(text)
    if bad is not None:
        raise UsageError(
            f"{what} {_shown(text)}: a name cannot hold {_describe(bad)}; give the person's name on one line, as plain text"
        )
    name = _fold(_fold(text))
    if not name:
        raise UsageError(f"{what} {_shown(text)}: the name is empty once spaces and invisible characters are removed")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"{what}: a name of {len(name)} characters; at most {MAX_NAME_LENGTH}")
    return name


def same_person_key(text: object) -> str:
    """The canonical form of a name already stored (never raises): for counting distinct people.

    Names recorded before normalisation existed are folded the same way, with forbidden
    characters dropped, so an old `carol ` and a new `carol` still count once. The CLI's
    `local:carol` (a name given with `--by`, not authenticated) and the API's `carol`
    (authenticated) are one person too: the two-person rule counts people, not channels.
    """
    raw = str(text)
    cleaned = "".join(ch for ch in raw if not _forbidden(ch))
    key = _fold(_fold(cleaned))
    return key[len(LOCAL_PREFIX) :].strip() if key.startswith(LOCAL_PREFIX) else key


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.casefold().split())


def _forbidden(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or ch in _BIDI_CONTROLS or ch in "\u2028\u2029"


def _first_forbidden(text: str) -> str | None:
    return next((ch for ch in text if _forbidden(ch)), None)


def _describe(ch: str) -> str:
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x1b": "an escape (ANSI) character"}
    if ch in names:
        return names[ch]
    if ch in _BIDI_CONTROLS:
        return f"a bidirectional override (U+{ord(ch):04X})"
    return f"a control character (U+{ord(ch):04X})"


def _shown(text: str) -> str:
    """The name as a safe, short Python literal (escapes visible), for error messages."""
    shown = ascii(text[:60])
    return shown + ("…" if len(text) > 60 else "")


def plain_text(text: object, what: str, *, one_line: bool = False, limit: int = 20_000) -> str:
    """Free text a person wrote (a root cause, an impact), trimmed; UsageError if empty or unsafe.

    Newlines and tabs are kept (unless `one_line`), every other control character and
    bidi override is refused: the text reaches the ledger, rca.md and terminals.
    """
    if not isinstance(text, str):
        raise UsageError(f"{what}: give text, not {type(text).__name__}")
    allowed = "" if one_line else "\n\t"
    bad = next((ch for ch in text.replace("\r\n", "\n") if _forbidden(ch) and ch not in allowed), None)
    if bad is not None:
        raise UsageError(f"{what} {_shown(text)}: the text cannot hold {_describe(bad)}")
    cleaned = unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()
    if not cleaned:
        raise UsageError(f"{what}: empty; say it in words")
    if len(cleaned) > limit:
        raise UsageError(f"{what}: {len(cleaned)} characters; at most {limit}")
    return cleaned
