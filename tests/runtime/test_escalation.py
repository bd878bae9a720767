"""The `[escalation]` table of the service configuration: good tables and each mistake, with
file:line (the end-to-end behaviour is in tests/serve/test_serve_escalation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsdsl.errors import ConfigError
from opsdsl.runtime.escalation import DEFAULT_LEVELS, EscalationPolicy
from opsdsl.serve.config import load_config

NOTIFIERS = """\
[[notifiers]]
kind = "webhook"
name = "oncall"
url = "http://127.0.0.1:9/oncall"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "opsdsl-serve.toml"
    path.write_text(NOTIFIERS + text, encoding="utf-8")
    return load_config(path)


def test_without_a_table_the_seed_levels_and_response_times_apply(tmp_path):
    assert load(tmp_path, "").escalation is None
    policy = EscalationPolicy()
    assert [level.name for level in policy.levels] == ["L1", "L2", "L3"] and policy.levels == DEFAULT_LEVELS
    assert policy.levels[0].page_at_start == ("SEV-1", "SEV-2")
    assert [policy.response_time(s) for s in ("SEV-1", "SEV-2", "SEV-3", "SEV-4")] == [300, 900, 3600, 86400]


def test_levels_and_response_times_from_the_file(tmp_path):
    policy = load(
        tmp_path,
        """
[escalation]
response = { "SEV-1" = "2m", "SEV-3" = "30m" }
[[escalation.levels]]
name = "L1"
who = "On-call"
notifiers = ["oncall"]
page_at_start = ["SEV-1"]
[[escalation.levels]]
name = "L2"
""",
    ).escalation
    assert [(level.name, level.who, level.notifiers, level.page_at_start) for level in policy.levels] == [
        ("L1", "On-call", ("oncall",), ("SEV-1",)),
        ("L2", "", (), ()),
    ]
    assert [policy.response_time(s) for s in ("SEV-1", "SEV-2", "SEV-3")] == [120, 900, 1800]


@pytest.mark.parametrize(
    ("table", "pointed", "message"),
    [
        ('[escalation]\nresponse = { "SEV-9" = "5m" }\n', "response", "not a severity"),
        ('[escalation]\nresponse = { "SEV-1" = "soon" }\n', "response", 'a duration such as "15m"'),
        ("[escalation]\nwhen = 1\n", "when", "unknown key"),
        ('[escalation]\n[[escalation.levels]]\nname = "L1"\nnotifiers = ["pager"]\n', "notifiers", "named 'pager'"),
        (
            '[escalation]\n[[escalation.levels]]\nname = "L1"\npage_at_start = ["SEV-7"]\n',
            "page_at_start",
            "severities",
        ),
        ('[escalation]\n[[escalation.levels]]\nwho = "nobody named"\n', "escalation.levels", 'such as "L1"'),
        (
            '[escalation]\n[[escalation.levels]]\nname = "L1"\n[[escalation.levels]]\nname = "L1"\n',
            "levels",
            "same name",
        ),
    ],
)
def test_each_mistake_is_an_error_at_its_line(tmp_path, table, pointed, message):
    import re

    with pytest.raises(ConfigError) as raised:
        load(tmp_path, "\n" + table)
    text = str(raised.value)
    assert message in text
    line = int(re.search(r"opsdsl-serve\.toml:(\d+):\d+:", text).group(1))
    assert pointed in (tmp_path / "opsdsl-serve.toml").read_text().splitlines()[line - 1]
