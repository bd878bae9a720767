"""`opsdsl run --dry-run`: what a run would do and why, without a single side effect.

Inputs are computed, `when` and `with:` are evaluated where they can be, and every policy
is evaluated for every step. Nothing is executed, nothing is written: no state database,
no ledger, no incident folder, no key. Results of earlier steps are unknown before a run,
so a `when` or `with:` that reads them is shown as decided at run time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from opsdsl.errors import EvalError
from opsdsl.runtime.gate import Gate
from opsdsl.runtime.secrets import Secrets


class _Unknown(Mapping[str, Any]):
    """A step's outputs before the run: every read fails, so dependents show as undecided."""

    def __getitem__(self, key: str) -> Any:
        raise EvalError("known only when the run executes the step")

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


class _SecretPlaceholders(Mapping[str, str]):
    def __getitem__(self, name: str) -> str:
        return f"<secret {name}>"

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def dry_run(
    plan: dict[str, Any],
    playbook: str | None,
    event: dict[str, Any] | None,
    params: Mapping[str, str],
    inputs: Mapping[str, str],
    secrets: Secrets,
) -> str:
    from opsdsl.lang.actions import policy_step_view
    from opsdsl.lang.taint import tainted_inputs
    from opsdsl.runtime import runner
    from opsdsl.runtime.executor import InProcessExecutor
    from opsdsl.runtime.scheduler import SCHEDULER_ACTIONS, render_with, taint_decision

    values = runner.resolve_params(plan, params, secrets)
    selections = runner.select_playbooks(plan, event, playbook, values)
    lines = [f"dry run of {plan['pack']['name']} {plan['pack'].get('version', '')}: nothing is executed or written"]
    if not selections:
        lines.append("no trigger of the pack matches the event; nothing would run")
        return secrets.redactor.text("\n".join(lines))  # secret params never show
    executor = InProcessExecutor()
    gate = Gate(plan["policies"], lambda action: action in SCHEDULER_ACTIONS or executor.knows(action))
    for selection in selections:
        book = plan["playbooks"][selection.playbook]
        why = f" (hook {selection.hook}, trigger {selection.trigger})" if selection.hook else ""
        lines.append("")
        lines.append(f"playbook {selection.playbook} [{book['severity']}]{why}")
        try:
            run_inputs = runner.resolve_inputs(book, selection.playbook, event or {}, values, inputs)
        except Exception as error:  # RunRefused / UsageError: show, do not stop the report
            lines.append(f"  would be refused: {getattr(error, 'message', error)}")
            continue
        if run_inputs:
            lines.append("  inputs: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in run_inputs.items()))
        nodes = {n["id"]: n for n in book["nodes"]}
        tainted = tainted_inputs(book.get("inputs") or {})
        run_view = {
            "id": "dry-run",
            "incident_id": "dry-run",
            "pack": plan["pack"]["name"],
            "playbook": selection.playbook,
            "severity": book["severity"],
            "status": "running",
            "started_at": time.time(),
            "dry_run": True,
            "inputs": secrets.redactor.data(run_inputs),  # as the run shows them to policies
        }
        results: dict[str, Any] = {}
        activation = {
            "params": values,
            "inputs": run_inputs,
            "steps": results,
            "event": event or {},
            "run": run_view,
            "secrets": _SecretPlaceholders(),
            "now": time.time(),
        }
        section = None
        for number, sid in enumerate(book["order"], 1):
            node = nodes[sid]
            if node["section"] != section:
                section = node["section"]
                lines.append("  steps:" if section == "steps" else "  finally (always):")
            verdict = "would run"
            if node.get("when"):
                try:
                    verdict = "would run" if _evaluate(node["when"], activation) is True else "would be skipped"
                except EvalError as error:
                    verdict = f"decided at run time (`when: {node['when']}`: {error.message})"
            refused = None
            try:
                rendered = render_with(node["action"], node.get("with") or {}, activation)
                shown = rendered
            except EvalError as error:
                rendered, shown = node.get("with") or {}, None
                if "may not be" in error.message:  # a URL segment the run would refuse
                    refused = error.message
            step_view = policy_step_view(
                sid,
                node.get("name"),
                node["action"],
                node.get("risk", "low"),
                rendered,
                node["timeout"],
                node["idempotent"],
                bool(node.get("compensation")),
            )
            decision = taint_decision(node["action"], node.get("with") or {}, tainted, rendered if shown else {})
            decision = decision or gate.judge(
                {
                    **activation,
                    "step": step_view,
                    "playbook": {
                        "name": selection.playbook,
                        "severity": book["severity"],
                        "pack": plan["pack"]["name"],
                    },
                }
            )
            gate_text = decision.decision
            if decision.decision != "allow":
                gate_text += f" — {decision.reason}"
            if decision.decision == "require_approval":
                gate_text += f" ({decision.approvals} approval{'s' if decision.approvals != 1 else ''})"
            lines.append(
                f"  {number:>2}. {sid} [{node['action']}, risk {node.get('risk', 'low')}]: {verdict}; policy: {gate_text}"
            )
            if refused:
                lines.append(f"      would fail: `with:` could not be rendered: {refused}")
            if shown is not None and shown:
                lines.append(f"      with: {json.dumps(shown, sort_keys=True)[:300]}")
            elif shown is None:
                lines.append("      with: rendered at run time (reads earlier steps' results)")
            results[sid] = {"status": "succeeded", "outputs": _Unknown(), "error": None, "attempts": 1}
        compensations = [n for n in book["nodes"] if n["section"] == "compensation"]
        if compensations:
            lines.append("  if a step fails, completed steps are undone in reverse order:")
            for node in compensations:
                lines.append(f"      {node['for']} → {node['id']} [{node['action']}]")
    return secrets.redactor.text("\n".join(lines))  # secret params never show


def _evaluate(text: str, activation: dict[str, Any]) -> Any:
    from opsdsl.lang.expr import compile_expr, parse

    return compile_expr(parse(text))(activation)
