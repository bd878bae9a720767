"""The catalogue of diagnostic codes: every OPS### has an entry here and a page in docs/rules/."""

from __future__ import annotations

from dataclasses import dataclass

from opsdsl.errors import Severity

E, W = Severity.ERROR, Severity.WARNING


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str

    @property
    def doc_path(self) -> str:
        return f"docs/rules/{self.code}.md"


RULES: dict[str, Rule] = {
    r.code: r
    for r in (
        # source and YAML
        Rule("OPS001", "unreadable-file", E, "The file cannot be read as a pack: empty, binary, not UTF-8, too large."),
        Rule("OPS002", "yaml-syntax", E, "The file is not valid YAML."),
        Rule("OPS003", "duplicate-key", E, "A mapping repeats a key."),
        Rule("OPS004", "non-string-key", E, "A mapping key is a number, boolean, null or collection."),
        Rule("OPS005", "yaml-resource-limit", E, "Aliases expand too far or nesting is too deep (alias bombs)."),
        Rule("OPS006", "unsupported-yaml", E, "A YAML feature packs do not use: custom tags, merge keys."),
        Rule("OPS007", "no-packs", E, "A folder given to the command holds no pack files."),
        # schema
        Rule("OPS010", "wrong-type", E, "A value has the wrong type."),
        Rule("OPS011", "unknown-key", E, "A key is not part of the language (often a typo)."),
        Rule("OPS012", "missing-key", E, "A required key is missing."),
        Rule("OPS013", "invalid-value", E, "A value is outside what the key allows: enum, pattern, range, length."),
        # expressions
        Rule("OPS020", "expression-syntax", E, "An expression or `${{ }}` template does not parse."),
        Rule("OPS021", "unknown-name", E, "An expression names a root or field that does not exist in its context."),
        Rule("OPS022", "unknown-function", E, "An expression calls a function that does not exist."),
        Rule("OPS023", "wrong-arity", E, "A function is called with the wrong number of arguments."),
        Rule("OPS024", "type-mismatch", E, "An expression compares or combines values of obviously different types."),
        Rule("OPS025", "step-not-ancestor", E, "An expression reads a step that has not necessarily run yet."),
        Rule("OPS026", "invalid-regex", E, "A `matches()` pattern is not valid RE2 syntax."),
        # references and structure
        Rule("OPS030", "duplicate-id", E, "Two steps, policies or packs share an id or name."),
        Rule("OPS031", "unknown-step", E, "`needs:` names a step that does not exist."),
        Rule("OPS032", "unknown-trigger", E, "A hook names a trigger that does not exist."),
        Rule("OPS033", "unknown-playbook", E, "A hook or `playbook.call` names a playbook that does not exist."),
        Rule("OPS034", "dependency-cycle", E, "Steps depend on each other in a cycle."),
        Rule("OPS035", "dead-step", W, "A step's `when:` is always false, so it never runs."),
        Rule("OPS036", "unknown-action", E, "A step uses an action that is neither built in nor a plugin."),
        Rule("OPS037", "param-default-type", E, "A parameter's or input's default does not match its type or enum."),
        Rule("OPS038", "duration-out-of-bounds", E, "A duration is zero or longer than its limit."),
        # review rules
        Rule("OPS040", "risky-step-unguarded", W, "A `risk: high` step has neither an approval nor a `compensate`."),
        Rule("OPS041", "network-without-timeout", W, "A network action has no `timeout:`."),
        Rule(
            "OPS042", "hook-without-cooldown", W, "A hook has no `cooldown:`, so a flapping alert starts run after run."
        ),
        Rule(
            "OPS043",
            "shell-injection",
            E,
            "Event or step data reaches a program name, code an interpreter runs, its standard input, or a loader "
            "variable.",
        ),
        Rule(
            "OPS044",
            "plaintext-secret",
            E,
            "A secret is written in the pack instead of referenced as `${{ secrets.NAME }}`.",
        ),
        Rule("OPS045", "unused-trigger", W, "A trigger no hook uses."),
        Rule("OPS046", "unused-playbook", W, "A playbook no hook or `playbook.call` runs."),
        Rule("OPS047", "unused-param", W, "A parameter no expression reads."),
        Rule("OPS048", "constant-condition", W, "A `when:` is always true, so it can be removed."),
        Rule("OPS049", "retry-without-idempotency", W, "A non-idempotent action is retried."),
        Rule(
            "OPS050",
            "untested-high-risk-step",
            W,
            "A `risk: high` step no pack test started (off unless `require-tested-high-risk = true`).",
        ),
        Rule(
            "OPS051",
            "tainted-destination",
            E,
            "Event or step data picks a URL's host, a path, a program's options or another setting only the pack "
            "may set.",
        ),
        Rule(
            "OPS052",
            "event-field-never-carried",
            W,
            "A trigger or hook reads an `event` field its `on:` kind never carries (e.g. `event.value` of an alert).",
        ),
        Rule(
            "OPS053",
            "runner-without-side-effect",
            E,
            "A step the scheduler runs itself (`wait`, `approval`, `assert`, `playbook.call`, `report.rca`) names a "
            "`runner:` pool.",
        ),
        # pack tests (`opsdsl test`)
        Rule("OPS060", "no-tests", E, "`opsdsl test` found no pack tests (*.test.yaml, *.test.yml, *.test.ops)."),
        Rule("OPS061", "test-pack-unusable", E, "A test file's pack or policy pack is missing or does not compile."),
        Rule(
            "OPS062",
            "test-unknown-name",
            E,
            "A test names a playbook, step, trigger, hook, param, input or policy the pack lacks.",
        ),
        Rule(
            "OPS063",
            "unmockable-step",
            E,
            "A mock for a step the scheduler runs itself, or a timeout no timeout can end.",
        ),
        Rule("OPS064", "impossible-expectation", E, "A test expects something no run of the pack can do."),
        Rule(
            "OPS065",
            "test-bad-value",
            E,
            "A test gives a value the run would refuse: a param's type, a missing input, a time.",
        ),
        Rule("OPS066", "duplicate-case", E, "Two cases of a test file have the same name."),
    )
}


def rule(code: str) -> Rule:
    return RULES[code]
