"""`opsdsl.lang.names`: one spelling per person, and no name that can forge a line."""

from __future__ import annotations

import pytest

from opsdsl.errors import UsageError
from opsdsl.lang.names import person_name, plain_text, same_person_key


@pytest.mark.parametrize("spelling", ["carol", "carol ", " Carol", "CAROL", "carol\u200b", "\ufeffcarol", "ｃａｒｏｌ"])
def test_spellings_of_one_person_are_one_name(spelling: str) -> None:
    assert person_name(spelling) == "carol"
    assert same_person_key(spelling) == "carol"


def test_inner_spaces_collapse_and_case_folds_fully() -> None:
    assert person_name("  Anne   Marie ") == "anne marie"
    assert person_name("STRAẞE") == person_name("strasse")


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("mallory\n✓ run succeeded", "a newline"),
        ("mallory\r", "a carriage return"),
        ("\x1b[2Jmallory", "an escape (ANSI) character"),
        ("mal\x00lory", "U+0000"),
        ("mal\x85lory", "U+0085"),
        ("mal\x7flory", "U+007F"),
        ("\u202eyrollam", "bidirectional override (U+202E)"),
        ("ali\u2066ce", "U+2066"),
    ],
)
def test_control_characters_are_refused_with_a_usage_error(name: str, said: str) -> None:
    with pytest.raises(UsageError) as caught:
        person_name(name)
    assert caught.value.exit_code == 2
    assert said in caught.value.message
    assert "\n" not in caught.value.message and "\x1b" not in caught.value.message


@pytest.mark.parametrize("name", ["", "   ", "\u200b", "\u200d\u00ad "])
def test_an_empty_name_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match="empty"):
        person_name(name)


def test_stored_names_fold_without_raising() -> None:
    assert same_person_key("carol\n") == "carol"


def test_free_text_keeps_lines_but_not_escapes() -> None:
    assert plain_text("  pool exhausted\n\nafter deploy  ", "--root-cause") == "pool exhausted\n\nafter deploy"
    with pytest.raises(UsageError, match="escape"):
        plain_text("red \x1b[31m", "--impact")
    with pytest.raises(UsageError, match="newline"):
        plain_text("a\nb", "--follow-up", one_line=True)
