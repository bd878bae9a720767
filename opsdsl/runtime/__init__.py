"""The runtime: run signed plans step by step with a policy gate, durable state and a ledger.

Stages inside the runtime, one module each:

- `entries`   the ledger entry kinds: one stream that is persisted, shown live and read
              back by incident records and reports
- `actions/`  the actions (shell, http.request, notify, evidence.collect, plugins) behind
              the `Action` interface in `actions/base.py`
- `executor`  the seam between the scheduler and the actions (in-process today)
- `secrets`   where secret values come from, and their redaction
- `plans`     where a run's plan comes from: a pack signed with the dev key, or a signed plan
- `inputs`    params, inputs and the playbooks an event selects
- `gate`      the policy gate before every step
- `store`     runs, steps and approvals in the state database (SQLite, WAL)
- `scheduler` the DAG: ready steps concurrently, retries, compensation, finally, pauses
              (with `approvals` and `endings` as its mixins, `outcome` what it returns)
- `runner`    the front door: create, drive, resume, approve, decide, acknowledge
- `triggers`  which events fire which triggers (count windows, `for:`, resolved alerts)
- `service`   events in, runs out: intake, hooks (cooldown, dedupe, caps), escalation
- `dryrun`    what a run would do, without doing anything
- `audit`     ledger verification, incident lookup and the report over a state directory
- `board`     the step-state model the live view draws
- `view`      the live display (rich on a terminal, JSON lines otherwise)
"""
