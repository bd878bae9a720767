"""Deterministic workload generator for the opsdsl benchmarks.

Generates realistic, schema-valid opsdsl packs (``kind: Pack``): triggers with ``when:``
expressions, hooks with cooldown/dedupe, playbooks of ``--steps`` steps mixing ``shell`` argv,
``http.request`` with timeouts and ``${{ }}`` interpolation, ``needs:``, ``when:`` on earlier
steps' outputs, retries, risk/compensation, and policies.

Everything is derived from ``random.Random`` seeded per pack from ``(seed, index)``, so pack
``i`` is byte-identical from run to run and independent of how many packs are generated.

As a module::

    from generate import generate_pack, dump_pack, write_packs
    text = dump_pack(generate_pack(seed=1, index=0, steps=30))

As a command::

    python bench/generate.py OUTDIR --packs 500 --steps 30 --seed 1
    python bench/generate.py --self-check          # schema-validate + check a sample
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "schemas" / "pack.schema.json"

DEFAULT_SEED = 20240611
DEFAULT_STEPS = 30

# --------------------------------------------------------------------------------------------
# YAML: a resolver whose booleans are only true/false (YAML 1.2 core), so the key `on:` stays
# the string "on" both when we dump it (emitted plain, as people write it) and when we load it.
# PyYAML's default YAML 1.1 resolver would read `on`, `yes`, `off`, `n`... as booleans.
# --------------------------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_STRICT_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


def _strict_bool_resolvers(base: type) -> dict:
    table = {
        ch: [(tag, rx) for tag, rx in entries if tag != _BOOL_TAG]
        for ch, entries in base.yaml_implicit_resolvers.items()
    }
    for ch in "tTfF":
        table.setdefault(ch, []).insert(0, (_BOOL_TAG, _STRICT_BOOL))
    return table


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class StrictBoolLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """Safe loader (libyaml when available) whose bools are only true/false."""


class PackDumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """Safe dumper (libyaml when available) that writes `on:` plain and keeps key order."""


StrictBoolLoader.yaml_implicit_resolvers = _strict_bool_resolvers(_BaseLoader)
PackDumper.yaml_implicit_resolvers = _strict_bool_resolvers(_BaseDumper)


class Flow(list):
    """A list written in flow style (`[a, b]`), as people write argv and short lists."""


class FlowMap(dict):
    """A mapping written in flow style (`{a: 1}`)."""


PackDumper.add_representer(Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
PackDumper.add_representer(FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))


def load_yaml(text: str | bytes) -> Any:
    """Load YAML the way opsdsl reads packs: safe, and `on:` stays a string."""
    return yaml.load(text, Loader=StrictBoolLoader)


def dump_pack(pack: dict) -> str:
    """The pack as YAML text: block style, flow style for argv and short lists, key order kept."""
    return yaml.dump(
        pack,
        Dumper=PackDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,  # no folding of long plain scalars, as people write them
        indent=2,
    )


def plain(obj: Any) -> Any:
    """`obj` with Flow/FlowMap turned into plain lists/dicts (what a loader gives back)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

SERVICES = [
    "checkout",
    "payments",
    "search",
    "ledger",
    "inventory",
    "auth",
    "gateway",
    "billing",
    "catalog",
    "orders",
    "sqlx-kernel",
    "notifications",
]
TEAMS = ["sre", "platform", "db-team", "payments-oncall", "core-infra", "search-sre"]
ALERTS = [
    "SqlxExecLatencyHigh",
    "KubePodCrashLooping",
    "NodeDiskPressure",
    "HTTP5xxRateHigh",
    "ReplicationLagHigh",
    "CertificateExpiringSoon",
    "QueueBacklogGrowing",
    "ConnectionPoolExhausted",
    "TLSHandshakeErrors",
    "GCPauseTooLong",
]
METRICS = [
    "sqlx_driver_errors_total",
    "http_requests_failed_total",
    "queue_dead_letters_total",
    "db_deadlocks_total",
    "cache_evictions_total",
]
CLUSTERS = ["prod-eu-1", "prod-us-east-2", "prod-ap-1", "staging-eu-1", "dev-1"]
RESOURCES = [
    "latency",
    "plans",
    "pool",
    "replicas",
    "connections",
    "cache",
    "queries",
    "locks",
    "shards",
    "flags",
]
JSON_FIELDS = [
    ("p95_ms", "num"),
    ("p99_ms", "num"),
    ("error_rate", "num"),
    ("active_connections", "num"),
    ("lag_seconds", "num"),
    ("status", "str"),
    ("errors", "list"),
    ("healthy", "bool"),
]
# tool -> [(step id, argv template, compensating argv template or None)]
TOOLS = {
    "kubectl": [
        ("restart_deployment", ["rollout", "restart", "deployment/{svc}"], None),
        (
            "scale_deployment",
            ["scale", "deployment/{svc}", "--replicas", "{n}"],
            ["scale", "deployment/{svc}", "--replicas", "{m}"],
        ),
        ("rollback_deployment", ["rollout", "undo", "deployment/{svc}"], None),
        ("cordon_node", ["cordon", "node-{n}"], ["uncordon", "node-{n}"]),
        ("delete_pods", ["delete", "pod", "-l", "app={svc}", "--wait=false"], None),
    ],
    "sqlxctl": [
        (
            "scale_pool",
            ["pool", "scale", "+${{{{ params.pool_step }}}}"],
            ["pool", "scale", "-${{{{ params.pool_step }}}}"],
        ),
        ("invalidate_plans", ["plans", "invalidate", "--all"], None),
        ("flush_cache", ["cache", "flush", "--scope", "{svc}"], None),
        ("promote_replica", ["replica", "promote", "--wait"], ["replica", "demote", "--wait"]),
        ("reset_stats", ["stats", "reset"], None),
    ],
    "flagctl": [
        (
            "disable_planner",
            ["disable", "{svc}.new-query-planner"],
            ["enable", "{svc}.new-query-planner"],
        ),
        ("read_only_mode", ["enable", "{svc}.read-only-mode"], ["disable", "{svc}.read-only-mode"]),
    ],
    "pgctl": [
        (
            "terminate_idle",
            ["terminate-idle", "--older-than", "${{{{ params.drain_timeout }}}}"],
            None,
        ),
        ("vacuum", ["vacuum", "--analyze", "{svc}"], None),
    ],
}
DURATIONS_SHORT = ["5s", "10s", "15s", "30s", "45s"]
DURATIONS_MED = ["1m", "2m", "5m", "10m"]
COOLDOWNS = ["5m", "10m", "15m", "30m", "1h", "1h30m"]
WORDS = [
    *("check", "verify", "confirm", "reduce", "drain", "restore", "capture", "record"),
    *("compare", "escalate", "mitigate", "the", "pool", "replica", "cache", "plan"),
    *("latency", "budget", "error", "rate", "cluster", "traffic", "owner", "runbook"),
    *("before", "after", "while", "under", "over", "slowly", "safely", "again", "first"),
    *("last", "each", "every", "current"),
]


def _sentence(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return (" ".join(words)).capitalize() + "."


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name))


# --------------------------------------------------------------------------------------------
# Pack generation
# --------------------------------------------------------------------------------------------


def pack_rng(seed: int, index: int) -> random.Random:
    """The RNG for pack `index`: independent of how many packs are generated."""
    return random.Random(seed * 1_000_003 + index)


def _params(rng: random.Random, svc: str) -> dict:
    params: dict[str, Any] = {
        "kernel_url": {
            "type": "string",
            "default": f"https://{svc}.internal.example:8443",
            "description": "Base URL of the service's admin API.",
        },
        "slo_p95_ms": {
            "type": "number",
            "default": rng.choice([150, 200, 250, 300, 500]),
            "description": "The p95 latency objective, in milliseconds.",
        },
        "error_threshold": {"type": "integer", "default": rng.choice([20, 50, 100])},
        "namespace": {"type": "string", "default": svc},
        "environment": {"type": "string", "enum": ["prod", "staging"], "default": "prod"},
        "pool_step": {"type": "integer", "default": rng.randint(1, 4)},
        "drain_timeout": {"type": "duration", "default": rng.choice(DURATIONS_MED)},
        "api_token": {
            "type": "string",
            "secret": True,
            "description": "Bearer token for the admin API.",
        },
    }
    if rng.random() < 0.5:
        params["excluded_clusters"] = {
            "type": "list",
            "default": Flow(rng.sample(CLUSTERS[3:], 2)),
        }
    return params


def _triggers(rng: random.Random, svc: str, params: dict) -> dict:
    alerts = rng.sample(ALERTS, 3)
    triggers: dict[str, Any] = {
        "latency_breach": {
            "on": "alert",
            "description": "The service is slower than its objective.",
            "when": (
                f'event.labels.alertname == "{alerts[0]}" && has(event.annotations.p95_ms)'
                " && double(event.annotations.p95_ms) > params.slo_p95_ms"
            ),
            "for": rng.choice(["1m", "2m", "5m"]),
        },
        "prod_alert": {
            "on": "alert",
            "when": (
                f'event.labels.alertname == "{alerts[1]}" && has(event.labels.cluster) && '
                'event.labels.cluster.startsWith("prod-")'
            ),
        },
        "error_spike": {
            "on": "metric",
            "when": (f'event.name == "{rng.choice(METRICS)}" && event.value >= params.error_threshold'),
            "threshold": {"count": rng.choice([10, 25, 50]), "within": rng.choice(["5m", "10m"])},
        },
    }
    if "excluded_clusters" in params:
        triggers["prod_alert"]["when"] += " && !(event.labels.cluster in params.excluded_clusters)"
    if rng.random() < 0.6:
        triggers["paged"] = {
            "on": "alert",
            "when": (
                f'event.labels.severity in ["critical", "page"] && event.labels.service == "{svc}"'
                f" && size(event.annotations) > {rng.randint(1, 3)}"
            ),
        }
    if rng.random() < 0.4:
        triggers["error_logs"] = {
            "on": "log",
            "when": (
                f'event.level == "error" && event.labels.service == "{svc}" && '
                'size(event.message) > 0 && !event.message.startsWith("healthcheck")'
            ),
            "threshold": {"count": 100, "within": "1m"},
        }
    return triggers


def _ancestors(deps_of: dict[str, list[str]], sid: str) -> set[str]:
    seen: set[str] = set()
    stack = list(deps_of[sid])
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(deps_of[cur])
    return seen


class _StepFactory:
    """Builds one playbook's steps; keeps ids unique and `when:` refs on ancestors only."""

    def __init__(self, rng: random.Random, svc: str, sub_playbook: str | None, severity: str = "SEV-2") -> None:
        self.rng = rng
        self.severity = severity
        self.svc = svc
        self.sub_playbook = sub_playbook
        self.ids: set[str] = set()
        self.kind: dict[str, str] = {}  # id -> action
        self.approval_fields: dict[str, str] = {}  # approval id -> integer output name
        self.deps_of: dict[str, list[str]] = {}
        self.order: list[str] = []
        self.calls = 0
        self._choice: tuple = ()

    def _id(self, base: str) -> str:
        sid, n = base, 2
        while sid in self.ids:
            sid, n = f"{base}_{n}", n + 1
        self.ids.add(sid)
        return sid

    def _url(self, resource: str, *, query: bool = True) -> str:
        url = f"${{{{ params.kernel_url }}}}/v1/{resource}"
        if query:
            url += "?cluster=${{ inputs.cluster }}"
        return url

    # --- conditions on earlier steps -------------------------------------------------------

    def _condition(self, ancestors: set[str]) -> str | None:
        rng = self.rng
        https = sorted(a for a in ancestors if self.kind.get(a) == "http.request")
        approvals = sorted(a for a in ancestors if a in self.approval_fields)
        choices = []
        if https:
            a = rng.choice(https)
            field, ftype = rng.choice(JSON_FIELDS)
            ref = f"steps.{a}.outputs.json.{field}"
            if ftype == "num":
                rhs = rng.choice(["params.slo_p95_ms", str(rng.randint(1, 900)), "0"])
                op = rng.choice([">", ">=", "<"])
                choices.append(f"{ref} {op} {rhs}")
            elif ftype == "str":
                choices.append(f'{ref} == "{rng.choice(["degraded", "failing", "saturated"])}"')
            elif ftype == "list":
                choices.append(f"size({ref}) > 0")
            else:
                choices.append(f"!{ref}")
            b = rng.choice(https)
            choices.append(f"has(steps.{b}.outputs.json.leader) && steps.{b}.outputs.json.leader != inputs.cluster")
        if approvals:
            a = rng.choice(approvals)
            choices.append(f"steps.{a}.outputs.{self.approval_fields[a]} > 0")
        choices.append('inputs.cluster.startsWith("prod-")')
        choices.append('event.labels.severity == "critical" || run.severity == "SEV-1"')
        return rng.choice(choices)

    # --- actions ---------------------------------------------------------------------------

    def _plan(self, action: str, first: bool) -> str:
        """Pick what the step does (kept in self._choice) and return a fitting base id."""
        rng = self.rng
        if action == "http.request":
            resource = "latency" if first else rng.choice(RESOURCES)
            method = "GET" if first else rng.choice(["GET", "GET", "POST", "POST", "PUT", "DELETE"])
            verb = rng.choice(["invalidate", "drain", "reset"]) if method in ("POST", "PUT") else ""
            self._choice = (resource, method, verb)
            if first:
                return "inspect"
            return {"GET": f"get_{resource}", "DELETE": f"delete_{resource}"}.get(method, f"{verb}_{resource}")
        if action == "shell":
            tool = rng.choice(sorted(TOOLS))
            base, template, undo = rng.choice(TOOLS[tool])
            self._choice = (tool, template, undo)
            return base
        return rng.choice(self.BASE_IDS[action])

    def _http(self, sid: str) -> dict:
        rng = self.rng
        resource, method, verb = self._choice
        with_: dict[str, Any] = {"method": method, "url": self._url(resource)}
        if rng.random() < 0.5:
            with_["headers"] = {"Authorization": "Bearer ${{ params.api_token }}"}
        if method in ("POST", "PUT"):
            with_["url"] = self._url(f"{resource}/{verb}")
            with_["json"] = {
                "cluster": "${{ inputs.cluster }}",
                "reason": _sentence(rng, 3, 5),
                "requested_by": "opsdsl",
            }
            with_["expect_status"] = Flow([200, 202])
        elif rng.random() < 0.5:
            with_["expect_status"] = Flow([200])
        step: dict[str, Any] = {"id": sid, "action": "http.request", "with": with_}
        step["timeout"] = rng.choice(DURATIONS_SHORT)
        if method != "GET" or rng.random() < 0.2:
            step["retry"] = {
                "attempts": rng.randint(2, 5),
                "backoff": rng.choice(["exponential", "fixed"]),
                "initial": rng.choice(["1s", "2s", "500ms"]),
                "max": rng.choice(["20s", "30s", "1m"]),
            }
        if method in ("POST", "PUT") and rng.random() < 0.5:
            step["risk"] = "medium"
            step["compensate"] = {
                "action": "http.request",
                "with": {
                    "method": "POST",
                    "url": self._url(f"{resource}/restore"),
                    "json": {"cluster": "${{ inputs.cluster }}"},
                },
                "timeout": "30s",
            }
        if method == "DELETE":
            step["risk"] = "high"
            step["idempotent"] = True
        return step

    def _shell(self, sid: str) -> dict:
        rng = self.rng
        tool, template, undo = self._choice
        n = rng.randint(1, 9)
        fill = {"svc": self.svc, "n": n, "m": max(1, n - 1)}
        tail = ["--context", "${{ inputs.cluster }}"]
        if tool == "kubectl":
            tail += ["--namespace", "${{ params.namespace }}"]
        argv = [tool, *(a.format(**fill) for a in template), *tail]
        with_: dict[str, Any] = {"argv": Flow(argv)}
        if rng.random() < 0.5:
            with_["env"] = {
                "KUBECONFIG": "/etc/opsdsl/kube/${{ inputs.cluster }}.yaml",
                "OPSDSL_REASON": "incident response",
            }
        if rng.random() < 0.3:
            with_["expect_exit"] = Flow([0, 3])
        if rng.random() < 0.2:
            with_["output_limit"] = 65536
        step: dict[str, Any] = {"id": sid, "action": "shell", "with": with_}
        step["timeout"] = rng.choice(DURATIONS_SHORT + DURATIONS_MED)
        risk = rng.choice(["low", "medium", "high", "high"])
        step["risk"] = risk
        if risk != "low" and undo:
            rev = [tool, *(a.format(**fill) for a in undo), *tail]
            step["compensate"] = {"action": "shell", "with": {"argv": Flow(rev)}, "timeout": "1m"}
        if rng.random() < 0.3:
            step["retry"] = {"attempts": 3, "backoff": "fixed", "initial": "5s"}
            step["idempotent"] = True
        if rng.random() < 0.1:
            step["continue_on_error"] = True
        return step

    def _approval(self, sid: str) -> dict:
        rng = self.rng
        field = rng.choice(["replicas", "extra_connections", "batch_size"])
        self.approval_fields[sid] = field
        return {
            "id": sid,
            "action": "approval",
            "with": {
                "message": "Proceed with the mitigation on ${{ inputs.cluster }}?",
                "approvers": Flow(rng.sample(TEAMS, 2)),
                "min_approvals": rng.choice([1, 2]),
                "on_timeout": "deny",
                "inputs": {
                    field: {
                        "type": "integer",
                        "default": rng.randint(1, 4),
                        "description": "How much to add.",
                    }
                },
            },
            "timeout": rng.choice(["15m", "30m", "1h"]),
        }

    def _notify(self, sid: str) -> dict:
        rng = self.rng
        kind = rng.choice(["slack", "slack", "webhook", "pagerduty"])
        with_: dict[str, Any] = {"kind": kind}
        if kind == "pagerduty":
            with_["routing_key"] = "${{ secrets.PD_ROUTING_KEY }}"
            with_["severity"] = rng.choice(["critical", "error", "warning"])
            with_["dedup_key"] = "${{ inputs.service }}-${{ inputs.cluster }}"
        elif kind == "slack":
            with_["url"] = "${{ secrets.SLACK_WEBHOOK }}"
        else:
            with_["url"] = "https://events.internal.example/hooks/opsdsl"
        with_["message"] = f"[${{{{ inputs.service }}}}/${{{{ inputs.cluster }}}}] {_sentence(rng, 5, 10)}"
        if rng.random() < 0.4:
            with_["fields"] = {"team": rng.choice(TEAMS), "runbook": f"RB-{rng.randint(100, 999)}"}
        return {"id": sid, "action": "notify", "with": with_, "timeout": "10s"}

    def _assert(self, sid: str, ancestors: set[str]) -> dict:
        rng = self.rng
        https = sorted(a for a in ancestors if self.kind.get(a) == "http.request")
        if https:
            a = rng.choice(https)
            that = f"steps.{a}.outputs.json.p95_ms <= params.slo_p95_ms * 2"
        else:
            that = 'inputs.service != "" && !(inputs.cluster in ["dev-1", "dev-2"])'
        return {
            "id": sid,
            "action": "assert",
            "with": {"that": that, "message": _sentence(rng, 4, 8)},
        }

    def _evidence(self, sid: str) -> dict:
        rng = self.rng
        with_: dict[str, Any] = {"name": f"{rng.choice(RESOURCES)}-snapshot"}
        with_["urls"] = [self._url(f"{rng.choice(RESOURCES)}/stats")]
        kubectl = ["kubectl", "get", "pods", "--namespace", "${{ params.namespace }}", "-o", "wide"]
        with_["commands"] = [Flow(kubectl)]
        if rng.random() < 0.5:
            with_["commands"].append(Flow(["sqlxctl", "stats", "dump", "--context", "${{ inputs.cluster }}"]))
        if rng.random() < 0.4:
            with_["files"] = [f"/var/log/{self.svc}/current.log"]
        return {"id": sid, "action": "evidence.collect", "with": with_, "timeout": "2m"}

    def _wait(self, sid: str) -> dict:
        return {
            "id": sid,
            "action": "wait",
            "with": {"duration": self.rng.choice(["30s", "1m", "2m"])},
        }

    def _call(self, sid: str) -> dict:
        self.calls += 1
        return {
            "id": sid,
            "action": "playbook.call",
            "with": {
                "playbook": self.sub_playbook,
                "inputs": {"cluster": "${{ inputs.cluster }}", "service": "${{ inputs.service }}"},
            },
            "timeout": "20m",
        }

    # --- steps -----------------------------------------------------------------------------

    ACTION_WEIGHTS: ClassVar[list[tuple[str, int]]] = [
        ("http.request", 32),
        ("shell", 28),
        ("notify", 8),
        ("assert", 7),
        ("evidence.collect", 8),
        ("approval", 6),
        ("wait", 6),
        ("playbook.call", 5),
    ]
    BASE_IDS: ClassVar[dict[str, list[str]]] = {
        "notify": ["notify_oncall", "announce", "page_owner", "update_channel"],
        "assert": ["check_budget", "verify_recovered", "check_inputs"],
        "evidence.collect": ["collect_stats", "capture_logs", "snapshot"],
        "approval": ["approve_scale", "approve_failover", "approve_restart"],
        "wait": ["settle", "cool_down", "wait_metrics"],
        "playbook.call": ["diagnostics", "collect_diagnostics"],
    }

    def step(self, first: bool = False, allow_call: bool = True, call: bool = False) -> dict:
        rng = self.rng
        if first:
            action = "http.request"
        elif call and self.sub_playbook and not self.calls:
            action = "playbook.call"
        else:
            names = [n for n, _ in self.ACTION_WEIGHTS]
            weights = [w for _, w in self.ACTION_WEIGHTS]
            action = rng.choices(names, weights)[0]
            if action == "playbook.call" and (not self.sub_playbook or not allow_call or self.calls):
                action = "http.request"
        sid = self._id(self._plan(action, first))

        # dependencies: default (after previous), explicit needs, or `needs: []`
        needs: list[str] | None = None
        if not self.order:
            deps: list[str] = []
        else:
            r = rng.random()
            if r < 0.25 and len(self.order) >= 2:
                needs = sorted(rng.sample(self.order, min(len(self.order), rng.randint(1, 2))))
                deps = needs
            elif r < 0.30:
                needs, deps = [], []
            else:
                deps = [self.order[-1]]
        self.deps_of[sid] = deps
        ancestors = _ancestors(self.deps_of, sid)

        builders = {
            "http.request": lambda: self._http(sid),
            "shell": lambda: self._shell(sid),
            "notify": lambda: self._notify(sid),
            "assert": lambda: self._assert(sid, ancestors),
            "evidence.collect": lambda: self._evidence(sid),
            "approval": lambda: self._approval(sid),
            "wait": lambda: self._wait(sid),
            "playbook.call": lambda: self._call(sid),
        }
        body = builders[action]()
        # the pack's high-risk policy exempts SEV-1; there, an unguarded high-risk step
        # (no compensate, no approval before it) is written as medium risk instead
        guarded = "compensate" in body or any(self.kind.get(a) == "approval" for a in ancestors)
        if body.get("risk") == "high" and not guarded and self.severity == "SEV-1":
            body["risk"] = "medium"
        step: dict[str, Any] = {"id": sid}
        if rng.random() < 0.3:
            step["name"] = _sentence(rng, 3, 6).rstrip(".")
        if rng.random() < 0.12:
            step["description"] = _sentence(rng, 8, 16)
        if needs is not None:
            step["needs"] = Flow(needs)
        if not first and ancestors and rng.random() < 0.4:
            cond = self._condition(ancestors)
            if cond:
                step["when"] = cond
        for key, value in body.items():
            if key != "id":
                step[key] = value
        self.kind[sid] = action
        self.order.append(sid)
        return step

    def finally_steps(self) -> list[dict]:
        rng = self.rng
        rca = {
            "id": self._id("rca"),
            "action": "report.rca",
            "with": {
                "title": f"{_camel(self.svc)} incident on ${{{{ inputs.cluster }}}}",
                "summary": ("Triggered by ${{ event.labels.alertname }} on ${{ inputs.cluster }}; " + _sentence(rng)),
                "include": Flow(["timeline", "steps", "policy_decisions", "evidence"]),
            },
        }
        done = {
            "id": self._id("notify_done"),
            "action": "notify",
            "with": {
                "kind": "slack",
                "url": "${{ secrets.SLACK_WEBHOOK }}",
                "message": "Run finished for ${{ inputs.service }} on ${{ inputs.cluster }}.",
            },
            "timeout": "10s",
        }
        return [rca, done]


def _playbook(rng: random.Random, svc: str, n_steps: int, severity: str, sub: str | None) -> tuple[dict, list[str]]:
    factory = _StepFactory(rng, svc, sub, severity)
    call_at = rng.randint(1, n_steps - 1) if sub and n_steps > 1 else -1
    steps = [factory.step(first=(i == 0), call=(i == call_at)) for i in range(n_steps)]
    pb: dict[str, Any] = {
        "severity": severity,
        "description": _sentence(rng, 8, 14),
        "timeout": rng.choice(["30m", "45m", "1h", "2h"]),
        "inputs": {
            # validated (pattern:), so the cluster may reach commands and URLs (OPS043/OPS051)
            "cluster": {"type": "string", "from": "event.labels.cluster", "pattern": "^[a-z0-9-]+$"},
            "service": {"type": "string", "from": "event.labels.service", "default": svc},
        },
        "steps": steps,
        "finally": factory.finally_steps(),
    }
    return pb, factory.order


def _policies(rng: random.Random) -> list[dict]:
    pols = [
        {
            "id": "approval-for-high-risk",
            "description": "High-risk steps need a human outside SEV-1.",
            "when": 'step.risk == "high" && run.severity != "SEV-1"',
            "effect": "require_approval",
            "message": "high-risk steps need a human outside SEV-1",
            "approvals": rng.choice([1, 2]),
        },
        {
            "id": "two-person-prod",
            "when": ('has(event.labels.cluster) && event.labels.cluster.startsWith("prod-") && step.risk != "low"'),
            "effect": "require_approval",
            "message": "production changes need two people",
            "approvals": 2,
        },
        {
            "id": "freeze-staging",
            "when": 'params.environment == "staging" && step.risk == "high"',
            "effect": "deny",
            "message": "no high-risk steps in staging during the freeze",
        },
        {
            "id": "allow-low-risk",
            "when": 'step.risk == "low"',
            "effect": "allow",
            "message": "low-risk steps run unattended",
        },
    ]
    # the high-risk approval policy always (guards risky steps); 1-3 of the others
    rest = pols[1:]
    rng.shuffle(rest)
    return [pols[0], *rest[: rng.randint(1, 3)]]


def generate_pack(seed: int = DEFAULT_SEED, index: int = 0, steps: int = DEFAULT_STEPS) -> dict:
    """Pack number `index` for `seed`: a dict ready for `dump_pack` (Flow/FlowMap inside).

    `steps` counts the entries under `steps:` across the pack's playbooks (a secondary
    playbook takes a few of them once `steps >= 10`); each playbook also has 2 `finally` steps.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    rng = pack_rng(seed, index)
    svc = SERVICES[index % len(SERVICES)]
    name = f"{svc}-{rng.choice(['latency', 'errors', 'capacity', 'failover'])}-{index:04d}"
    sub_steps = min(5, steps // 6) if steps >= 10 else 0
    sub_name = "collect-diagnostics" if sub_steps else None
    main_name = f"{svc}-{rng.choice(['regression', 'mitigation', 'recovery'])}"

    params = _params(rng, svc)
    triggers = _triggers(rng, svc, params)
    main, _ = _playbook(rng, svc, steps - sub_steps, rng.choice(["SEV-1", "SEV-2"]), sub_name)
    playbooks: dict[str, Any] = {main_name: main}
    if sub_name:
        sub, _ = _playbook(rng, svc, sub_steps, "SEV-3", None)
        playbooks[sub_name] = sub

    hooks: dict[str, Any] = {}
    for trig in triggers:
        hook: dict[str, Any] = {
            "trigger": trig,
            "run": main_name if (trig != "error_logs" or not sub_name) else sub_name,
            "cooldown": rng.choice(COOLDOWNS),
            "dedupe": rng.choice(
                [
                    "event.labels.cluster",
                    'event.labels.service + "/" + event.labels.cluster',
                    "event.labels.alertname",
                ]
            ),
        }
        if rng.random() < 0.6:
            hook["max_concurrent"] = rng.randint(1, 4)
        if rng.random() < 0.5:
            hook["escalate"] = f"{rng.choice(TEAMS)}-primary"
        hooks[f"on{_camel(trig)}"] = hook

    pack = {
        "apiVersion": "opsdsl/v1",
        "kind": "Pack",
        "metadata": {
            "name": name,
            "version": f"{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            "owner": rng.choice(TEAMS),
            "description": _sentence(rng, 10, 18),
            "labels": {"service": svc, "tier": rng.choice(["1", "2", "3"]), "generated": "bench"},
        },
        "params": params,
        "triggers": triggers,
        "hooks": hooks,
        "playbooks": playbooks,
        "policies": _policies(rng),
    }
    # keep only the params something reads (an unread param is a lint warning)
    text = json.dumps({k: v for k, v in pack.items() if k != "params"})
    for pname in list(params):
        if not re.search(rf"\bparams\.{pname}\b", text):
            del params[pname]
    return pack


SMALL_PACK_INDEX = 99_999  # its own name, so it can be linted beside the big workload
SMALL_PACK_STEPS = 6


def small_pack(seed: int = DEFAULT_SEED) -> dict:
    """The small pack of the single-file rows: 6 steps (about 6 KiB)."""
    return generate_pack(seed, SMALL_PACK_INDEX, SMALL_PACK_STEPS)


def write_packs(
    outdir: str | Path,
    packs: int = 500,
    steps: int = DEFAULT_STEPS,
    seed: int = DEFAULT_SEED,
    prefix: str = "pack",
) -> list[Path]:
    """Write `packs` packs to `outdir/{prefix}-NNNN.yaml`; returns the paths, sorted."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(packs):
        path = out / f"{prefix}-{i:04d}.yaml"
        path.write_text(dump_pack(generate_pack(seed, i, steps)), encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------------------------

_EXPR_KEYS = {"when", "dedupe", "from", "that"}
_INTERP = re.compile(r"\$\{\{(.*?)\}\}")


def iter_expressions(node: Any, path: str = "") -> Any:
    """Yield (path, expression text) for every `when`/`dedupe`/`from`/`that` and `${{ }}`."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}"
            if k in _EXPR_KEYS and isinstance(v, str):
                yield p, v
            else:
                yield from iter_expressions(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_expressions(v, f"{path}[{i}]")
    elif isinstance(node, str):
        for m in _INTERP.finditer(node):
            yield path, m.group(1).strip()


def check_pack(pack: dict, text: str, validator: Any = None) -> list[str]:
    """Problems with one generated pack (empty list = fine)."""
    problems: list[str] = []
    loaded = load_yaml(text)
    if loaded != plain(pack):
        problems.append("YAML round trip (strict-bool loader) changed the pack")
    if "on" not in next(iter(loaded["triggers"].values())):
        problems.append("`on:` did not load as the string key 'on'")
    if validator is not None:
        for err in validator.iter_errors(loaded):
            where = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"schema: {where}: {err.message[:200]}")
    try:  # YAML 1.2 (what check-jsonschema reads with) must see the same data
        from ruamel.yaml import YAML

        if YAML(typ="safe", pure=True).load(text) != loaded:
            problems.append("ruamel.yaml (YAML 1.2) reads the pack differently")
    except ImportError:
        pass
    # references
    pbs = loaded["playbooks"]
    for hname, hook in loaded.get("hooks", {}).items():
        if hook["trigger"] not in loaded.get("triggers", {}):
            problems.append(f"hook {hname}: unknown trigger {hook['trigger']}")
        if hook["run"] not in pbs:
            problems.append(f"hook {hname}: unknown playbook {hook['run']}")
    used = {h["trigger"] for h in loaded.get("hooks", {}).values()}
    for t in loaded.get("triggers", {}):
        if t not in used:
            problems.append(f"trigger {t} is used by no hook")
    for pname, pb in pbs.items():
        seen: list[str] = []
        deps_of: dict[str, list[str]] = {}
        for st in pb["steps"]:
            sid = st["id"]
            if sid in deps_of:
                problems.append(f"{pname}: duplicate step id {sid}")
            needs = st.get("needs")
            deps = list(needs) if needs is not None else seen[-1:]
            for d in deps:
                if d not in deps_of:
                    problems.append(f"{pname}.{sid}: needs unknown or later step {d}")
            deps_of[sid] = [d for d in deps if d in deps_of]
            anc = _ancestors(deps_of, sid)
            for _, expr in iter_expressions(st):
                for ref in re.findall(r"steps\.([A-Za-z_][A-Za-z0-9_]*)", expr):
                    if ref not in anc:
                        problems.append(f"{pname}.{sid}: refers to steps.{ref}, not an ancestor")
            if st["action"] == "playbook.call" and st["with"]["playbook"] not in pbs:
                problems.append(f"{pname}.{sid}: calls unknown playbook")
            seen.append(sid)
        ids = [s["id"] for s in pb["steps"] + pb.get("finally", [])]
        if len(ids) != len(set(ids)):
            problems.append(f"{pname}: step ids (with finally) are not unique")
    return problems


def check_expressions_with_cel(pack: dict) -> list[str]:
    """Every expression in the pack must compile with cel-python (the CEL oracle)."""
    try:
        import celpy
    except ImportError:
        return []
    env = celpy.Environment()
    problems = []
    for where, expr in iter_expressions(pack):
        try:
            env.compile(expr)
        except Exception as exc:
            problems.append(f"cel: {where}: {expr!r}: {str(exc).splitlines()[0]}")
    return problems


def self_check(packs: int = 40, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, out=sys.stdout) -> bool:
    """Generate `packs` packs and check them: schema, round trip, references, CEL, determinism."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    ok = True
    sizes = []
    actions: dict[str, int] = {}
    for i in range(packs):
        pack = generate_pack(seed, i, steps)
        text = dump_pack(pack)
        sizes.append(len(text.encode()))
        if dump_pack(generate_pack(seed, i, steps)) != text:
            print(f"pack {i}: not deterministic", file=out)
            ok = False
        problems = check_pack(pack, text, validator) + check_expressions_with_cel(pack)
        for pb in pack["playbooks"].values():
            for st in pb["steps"]:
                actions[st["action"]] = actions.get(st["action"], 0) + 1
        for p in problems[:10]:
            print(f"pack {i}: {p}", file=out)
        ok = ok and not problems
    # the small pack used by the single-file rows
    small = small_pack(seed)
    for p in check_pack(small, dump_pack(small), validator) + check_expressions_with_cel(small):
        print(f"small pack: {p}", file=out)
        ok = False
    avg = sum(sizes) / len(sizes) / 1024
    print(
        f"self-check: {packs} packs x {steps} steps, seed {seed}: avg {avg:.1f} KiB "
        f"(min {min(sizes) / 1024:.1f}, max {max(sizes) / 1024:.1f}); actions {actions}; "
        f"{'OK' if ok else 'FAILED'}",
        file=out,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", nargs="?", help="directory to write pack-NNNN.yaml into")
    ap.add_argument("--packs", type=int, default=500)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument(
        "--self-check",
        action="store_true",
        help="validate generated packs (schema, YAML round trip, references, CEL) and exit",
    )
    args = ap.parse_args(argv)
    if args.self_check:
        return 0 if self_check(min(args.packs, 40), args.steps, args.seed) else 1
    if not args.outdir:
        ap.error("OUTDIR is required (or use --self-check)")
    paths = write_packs(args.outdir, args.packs, args.steps, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(
        f"wrote {len(paths)} packs to {args.outdir} ({total / 1024:.0f} KiB, "
        f"avg {total / max(1, len(paths)) / 1024:.1f} KiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
