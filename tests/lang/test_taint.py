"""opsdsl.lang.taint: what counts as event data, where it may go, and how URLs render it."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from opsdsl.lang.taint import input_problem, render_url, step_findings, tainted_inputs, url_component

URL = "http://api:8080/v1/clusters/${{ event.labels.c }}/pool?note=${{ event.labels.n }}#${{ event.labels.f }}"


@given(st.text(), st.text(), st.text())
def test_a_rendered_value_never_leaves_its_url_component(segment: str, note: str, fragment: str):
    if segment in (".", ".."):
        return
    url = render_url(URL, {"event": {"labels": {"c": segment, "n": note, "f": fragment}}})
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "api:8080")
    path = parts.path.split("/")
    assert path[:3] == ["", "v1", "clusters"] and path[4:] == ["pool"]
    assert unquote(path[3]) == segment
    assert parts.query.count("=") == 1 and unquote(parts.query.split("=", 1)[1]) == note
    assert unquote(parts.fragment) == fragment


def test_the_authority_and_raw_values_are_inserted_as_they_are():
    activation = {"params": {"api": "http://h:1/base"}, "inputs": {"p": "a/b"}}
    assert render_url("${{ params.api }}/x/${{ raw(inputs.p) }}", activation) == "http://h:1/base/x/a/b"
    assert url_component("http://") == "origin" and url_component("http://h/") == "path"


def test_validated_inputs_are_no_longer_event_data():
    inputs = {
        "free": {"type": "string", "from": "event.labels.x"},
        "pattern": {"type": "string", "from": "event.labels.x", "pattern": "[a-z]+"},
        "enum": {"type": "string", "from": "event.labels.x", "enum": ["a"]},
        "bounded": {"type": "string", "from": "event.labels.x", "max_length": 3},
        "operator": {"type": "string"},
    }
    assert tainted_inputs(inputs) == {"free", "bounded"}
    assert tainted_inputs(inputs, {"operator": True}) == {"free", "bounded", "operator"}


def test_input_problems_describe_the_value_without_quoting_it():
    secret = "S3cr3t-token-value"
    for spec in ({"pattern": "[a-z]+"}, {"enum": ["a"]}, {"max_length": 3}):
        problem = input_problem(spec, secret)
        assert problem is not None and secret not in problem
    assert input_problem({"pattern": "[a-z]+"}, "abc") is None
    assert input_problem({"pattern": "(a)\\1"}, "aa") is not None  # RE2 refuses backreferences


def test_a_linear_time_pattern_on_an_adversarial_value():
    assert input_problem({"pattern": "^([a-z0-9]+-?)+$"}, "a" * 50_000 + "!") is not None


def test_plugin_actions_take_their_inputs_as_data():
    assert step_findings("acme.page", {"target": "${{ event.labels.x }}"}, frozenset()) == []


def test_rendered_programs_are_checked_at_run_time():
    with_ = {"argv": ["${{ params.shell }}", "-c", "echo ${{ event.labels.x }}"]}
    assert step_findings("shell", with_, frozenset()) == []  # lint cannot know the program
    rendered = {"argv": ["/bin/sh", "-c", "echo hi"]}
    (finding,) = step_findings("shell", with_, frozenset(), rendered)
    assert finding.code == "OPS043" and finding.path == ("argv", 2)


def test_the_arguments_of_a_fixed_script_are_data_but_code_flags_are_not():
    script = {"argv": ["python3", "/opt/tool.py", "say", "${{ event.labels.x }}"]}
    assert step_findings("shell", script, frozenset()) == []
    code = {"argv": ["python3", "-c", "print(1)", "${{ event.labels.x }}"]}
    assert [f.path for f in step_findings("shell", code, frozenset())] == [("argv", 3)]
    chosen = {"argv": ["python3", "${{ event.labels.script }}", "x"]}
    assert [f.path for f in step_findings("shell", chosen, frozenset())] == [("argv", 1)]


def test_an_option_looking_value_after_a_literal_double_dash_is_data():
    with_ = {"argv": ["sqlxctl", "drain", "--", "${{ event.labels.x }}"]}
    assert step_findings("shell", with_, frozenset(), {"argv": ["sqlxctl", "drain", "--", "--all"]}) == []
    bare = {"argv": ["sqlxctl", "drain", "${{ event.labels.x }}"]}
    (finding,) = step_findings("shell", bare, frozenset(), {"argv": ["sqlxctl", "drain", "--all"]})
    assert "would read it as an option" in finding.message
