"""How a run stops: paused for people, or finished; the closing ledger entries, the signed
checkpoint, and the incident record. A mixin of `Scheduler`."""

from __future__ import annotations

from opsdsl.audit import entries as E
from opsdsl.runtime import store as S
from opsdsl.runtime.outcome import TIMED_OUT, TIMEOUT_VOTER, Outcome


class RunEndings:
    def _pause(self) -> Outcome:
        pending = sorted(
            sid for sid, r in self.steps.items() if r.status in (S.AWAITING_APPROVAL, S.IN_DOUBT, S.WAITING)
        )
        reasons = {S.AWAITING_APPROVAL: "approval", S.IN_DOUBT: "in_doubt", S.WAITING: "timer"}
        waiting = [{"step": sid, "reason": reasons[self.steps[sid].status]} for sid in pending]
        for item in waiting:
            if item["reason"] == "timer":
                item["until"] = self.steps[item["step"]].wake_at
        self._commit(
            [(E.RUN_PAUSED, {"waiting": waiting})],
            run_fields={"status": S.PAUSED},
            checkpoint=True,
            timers=self._wake_ups(pending),
        )
        self._write_incident()
        approvals = [sid for sid in pending if self.steps[sid].status == S.AWAITING_APPROVAL]
        doubt = [sid for sid in pending if self.steps[sid].status == S.IN_DOUBT]
        return Outcome("paused", approvals, None, doubt)

    def _wake_ups(self, pending: list[str]) -> list[tuple[str, str, float]]:
        """The timers of what the paused run waits on, written again with every pause: a
        server may have dropped one as due that turned out not to be (its clock went back)."""
        timers = []
        for sid in pending:
            row, node = self.steps[sid], self.nodes[sid]
            if row.status == S.WAITING and row.wake_at is not None:
                timers.append((sid, "wait" if node["action"] == "wait" else "backoff", row.wake_at))
            deadline = node["timeout"] if node["action"] == "approval" else None
            if row.status == S.AWAITING_APPROVAL and deadline is not None and row.started_at is not None:
                timers.append((sid, "approval_timeout", row.started_at + deadline / 1000))
        return timers

    def _finish(self) -> Outcome:
        failed = sorted(
            sid
            for sid, r in self.steps.items()
            if r.status == S.FAILED and not self.nodes[sid].get("continue_on_error")
        )
        compensated = sorted(
            self.nodes[sid]["for"]
            for sid, r in self.steps.items()
            if self.nodes[sid]["section"] == "compensation" and r.status == S.SUCCEEDED
        )
        timed_out = self.run.error == TIMED_OUT
        status = S.FAILED if failed or timed_out else S.SUCCEEDED
        error = TIMED_OUT if timed_out else None
        if failed and not timed_out:
            first = min(failed, key=lambda s: self.steps[s].finished_at or 0)
            error = f"step `{first}` failed: {self.steps[first].error}"
        if self._cancelled_by is not None:  # what a person asked for says more than what it caused
            status, error = S.CANCELLED, f"cancelled by {self._cancelled_by}"
        human = self._human_involved()
        data = {
            "status": status,
            "error": error,
            "failed_steps": failed,
            "compensated": compensated,
            "human": human,
            "escalate": self.run.escalate if status == S.FAILED else None,
        }
        self._commit(
            [(E.RUN_FINISHED, data)],
            run_fields={"status": status, "finished_at": self.env.clock(), "error": error, "owner_pid": None},
            checkpoint=True,
        )
        self._write_incident()
        return Outcome(status, [], error)

    def _human_involved(self) -> bool:
        """Whether a person approved, denied, decided or acknowledged anything in this run."""
        conn = self.store.conn
        kinds = (E.STEP_DECIDED, E.RUN_ACKNOWLEDGED)
        voted = conn.execute(
            "SELECT 1 FROM approvals WHERE run_id = ? AND by != ? LIMIT 1", (self.run.id, TIMEOUT_VOTER)
        )
        if voted.fetchone() is not None:
            return True
        if self.store.ledger.journaled:  # a decision or an ack may still wait in the journal
            return any(entry.kind in kinds for entry in self.store.ledger.entries(run=self.run.id))
        decided = conn.execute("SELECT 1 FROM ledger WHERE run = ? AND kind IN (?, ?) LIMIT 1", (self.run.id, *kinds))
        return decided.fetchone() is not None

    def _write_incident(self) -> None:
        if not self.env.write_incidents:
            return
        from opsdsl.audit.incident import write_incident

        # Journal mode: the record's entries_digest and checkpoint need the run's entries chained.
        self.store.ledger.settle(self.run.id)
        entries = [e.to_dict() for e in self.store.ledger.entries(run=self.run.id)]
        checkpoint = self.store.ledger.latest_checkpoint()
        rca = None
        for sid, node in self.nodes.items():
            if node["action"] == "report.rca" and self.steps[sid].status == S.SUCCEEDED:
                rca = {k: v for k, v in (self.steps[sid].outputs or {}).items() if k != "path" and v is not None}
        arguments = {
            "checkpoint": checkpoint.to_dict() if checkpoint else None,
            "signer": self.env.signer,
            "signing": self.env.signing,
            "rca": rca,
            "redact": self.redactor.text,
            "plan_envelope": self.run.envelope,  # the evidence pack: the plan and its packs
        }
        root = self.incident_folder.parents[1]  # the run's own incidents root, even on resume
        writer = getattr(self.env, "incident_writer", None)  # a server's: runtime/incident_writer.py
        if writer is not None:  # off the event loop, in the order the runs ended
            writer.submit(root, entries, **arguments)
            return
        from opsdsl.runtime.database import folder_lock

        # The evidence pack: the ledger excerpt to the checkpoint. On PostgreSQL under the
        # folder's lock: a worker's sweep never writes it at the same time (incident_sweep.py).
        with folder_lock(self.store, self.run.id):
            write_incident(root, entries, ledger=self.store.ledger, **arguments)
