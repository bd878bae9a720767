"""Redaction at a cut: a text shortened before it was redacted keeps no piece of a secret,
and the built-in actions' outputs and failures go out redacted, unchained."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.shell import ShellAction
from opsdsl.runtime.secrets import MASK, Redactor, fragment_floor

SECRET = "kt-9f8e7d6c5b4a-secret-value"


def fragments(secret: str, text: str) -> list[str]:
    """Pieces of `secret` of at least fragment_floor characters that `text` holds."""
    floor = fragment_floor(len(secret))
    return [
        secret[i:j]
        for i in range(len(secret))
        for j in range(i + floor, len(secret) + 1)
        if secret[i:j] in text and (i == 0 or j == len(secret))
    ]


@pytest.mark.parametrize("cut", range(6, len(SECRET)))
def test_an_output_cut_mid_secret_keeps_no_head_of_it(cut: int) -> None:
    redactor = Redactor([SECRET])
    text = ("x" * 100 + SECRET)[: 100 + cut]
    redacted = redactor.text(text)
    assert redacted == "x" * 100 + MASK
    assert redactor.bytes(text.encode()) == b"x" * 100 + MASK.encode()


def test_a_text_kept_from_its_end_keeps_no_tail_of_a_secret() -> None:
    redactor = Redactor([SECRET])
    assert redactor.text(SECRET[9:] + " and the rest") == MASK + " and the rest"


def test_a_message_shortened_with_an_ellipsis_keeps_no_head() -> None:
    redactor = Redactor([SECRET])
    message = "with.url: 'http://k/?t=" + SECRET[:12] + "…' is not valid; with.body: ok"
    assert redactor.text(message) == "with.url: 'http://k/?t=***…' is not valid; with.body: ok"


def test_a_character_cut_in_half_is_still_a_cut() -> None:
    secret = "admin-pässwört-4711"
    whole = ("log " + secret).encode()
    data = whole[: whole.index("ö".encode()) + 1]  # inside the two bytes of "ö"
    text = data.decode("utf-8", errors="replace")
    assert text.endswith("\ufffd")
    assert Redactor([secret]).text(text) == "log ***\ufffd"
    assert Redactor([secret]).bytes(data) == b"log ***"


def test_short_pieces_and_unrelated_ends_are_kept() -> None:
    redactor = Redactor([SECRET])
    assert redactor.text("status: kt-9f") == "status: kt-9f"  # 5 characters: below the floor
    assert redactor.text("kt-9f8e7d6c is mid-text, not at a cut") == "kt-9f8e7d6c is mid-text, not at a cut"


@given(st.text(min_size=8, max_size=40), st.text(max_size=30), st.integers(min_value=0, max_value=40))
def test_no_head_survives_any_cut(secret: str, before: str, keep: int) -> None:
    redactor = Redactor([secret])
    text = (before + secret)[: len(before) + keep]
    redacted = redactor.text(text)
    floor = fragment_floor(len(secret))
    assert not any(redacted.endswith(secret[:size]) for size in range(floor, len(secret) + 1)) or secret in MASK


# ---- the built-in actions -------------------------------------------------------------------


def request(inputs: dict) -> ActionRequest:
    return ActionRequest(
        run_id="run-3",
        step_id="show",
        action="shell",
        inputs=inputs,
        attempt=1,
        idempotency_key="run-3:show",
        timeout=10,
    )


def context(tmp_path: Path) -> ActionContext:
    redactor = Redactor([SECRET])
    return ActionContext(evidence_dir=tmp_path / "evidence", redact=redactor.text, redact_bytes=redactor.bytes)


def test_a_shell_output_cut_at_its_limit_keeps_no_piece_of_the_secret(tmp_path: Path) -> None:
    # 1024 bytes kept: the secret starts 1010 bytes in, so 14 of its characters are kept.
    program = f"import sys; sys.stdout.write('y' * 1010 + {SECRET!r} * 3)"
    outputs = asyncio.run(
        ShellAction().run(request({"argv": [sys.executable, "-c", program], "output_limit": 1024}), context(tmp_path))
    )
    assert outputs["truncated"] is True
    assert outputs["stdout"] == "y" * 1010 + MASK
    assert fragments(SECRET, outputs["stdout"]) == []


def test_a_failure_is_redacted_and_not_chained_to_the_original(tmp_path: Path) -> None:
    program = f"import sys; sys.stderr.write('denied for {SECRET}'); sys.exit(3)"
    with pytest.raises(ActionFailed) as caught:
        asyncio.run(ShellAction().run(request({"argv": [sys.executable, "-c", program]}), context(tmp_path)))
    assert SECRET not in caught.value.message
    assert "denied for ***" in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__context__ is None
