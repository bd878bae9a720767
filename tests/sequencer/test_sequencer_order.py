"""The journal's order rules (opsdsl.runtime.sequencer): per-run order is the run's commit
order even where transaction ids and journal ids say otherwise; a transaction that may
still commit an older xid holds the chain back; rolled back entries never appear."""

from __future__ import annotations

import threading
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from journal_helpers import Writer, chained, check_chain, journal_left

from opsdsl.runtime.sequencer import Sequencer, _in_run_order


def _leader(url: str, key) -> Sequencer:
    sequencer = Sequencer(url, key)
    assert sequencer.lead()
    return sequencer


def _drain(sequencer: Sequencer) -> None:
    while sequencer.chain_batch().count:
        pass


def test_an_older_transaction_that_commits_later_is_chained_after(journal_url: str, signing_key) -> None:
    """A takes its xid first, B second; B journals for the run and commits, then A does.
    Ordered by xid (or journal id, were A to insert first) A would come first: it must not."""
    a, b = Writer(journal_url), Writer(journal_url)
    sequencer = _leader(journal_url, signing_key)
    try:
        xa = a.begin()
        xb = b.begin()
        assert xa < xb
        b.journal("run-1", by="b")
        b.commit()
        # Rule 2: A (an older xid) still runs, so B's entry is not ready: were it chained
        # now, A's entries (older xid) would have to go before entries already chained.
        assert sequencer.chain_batch().count == 0
        a.journal("run-1", by="a")
        a.commit()
        batch = sequencer.chain_batch()
        assert batch.count == 2
        assert chained(journal_url, "run-1") == [{"by": "b"}, {"by": "a"}]
        assert journal_left(journal_url) == 0
        assert check_chain(journal_url, signing_key) == 2
    finally:
        for writer in (a, b):
            writer.close()
        sequencer.close()


def test_an_entry_waits_for_its_runs_earlier_one_across_batches(journal_url: str, signing_key) -> None:
    """A (oldest xid) and C run; B (newest) journals run-1 #1 and commits; A journals run-1
    #2 and commits. A's entry is ready (its xid is below C's), B's is not (C may still
    commit below it): A's is held back until B's is chained, in a later batch."""
    a, b, c = Writer(journal_url), Writer(journal_url), Writer(journal_url)
    sequencer = _leader(journal_url, signing_key)
    try:
        a.begin()
        c.begin()
        b.begin()
        b.journal("run-1", by="b")
        b.commit()
        a.journal("run-1", by="a")
        a.journal(None, by="a, about no run")
        a.commit()
        batch = sequencer.chain_batch()
        assert (batch.count, batch.held) == (1, 1)  # A's entry about no run goes; A's run-1 entry waits
        assert chained(journal_url, "run-1") == []
        c.commit()
        assert sequencer.chain_batch().count == 2
        assert chained(journal_url, "run-1") == [{"by": "b"}, {"by": "a"}]
        assert check_chain(journal_url, signing_key) == 3
    finally:
        for writer in (a, b, c):
            writer.close()
        sequencer.close()


def test_a_second_writer_of_a_run_waits_for_the_first_to_commit(journal_url: str, signing_key) -> None:
    """Numbering happens under the run's row lock: B's entry for the run waits until A ends."""
    a, b = Writer(journal_url), Writer(journal_url)
    try:
        a.begin()
        a.journal("run-1", by="a")
        b.begin()
        done = threading.Event()

        def second() -> None:
            b.journal("run-1", by="b")
            b.commit()
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(0.3)  # blocked on run-1's row
        a.commit()
        assert done.wait(5)
        thread.join()
        sequencer = _leader(journal_url, signing_key)
        _drain(sequencer)
        sequencer.close()
        assert chained(journal_url, "run-1") == [{"by": "a"}, {"by": "b"}]
    finally:
        for writer in (a, b):
            writer.close()


def test_a_rolled_back_transaction_leaves_no_entry_and_no_gap(journal_url: str, signing_key) -> None:
    a, b = Writer(journal_url), Writer(journal_url)
    try:
        a.begin()
        a.journal("run-1", by="a")
        a.rollback()
        b.begin()
        b.journal("run-1", by="b")
        b.commit()
        sequencer = _leader(journal_url, signing_key)
        _drain(sequencer)
        sequencer.close()
        assert chained(journal_url, "run-1") == [{"by": "b"}]
    finally:
        for writer in (a, b):
            writer.close()


def test_only_one_sequencer_leads(journal_url: str, signing_key) -> None:
    first, second = Sequencer(journal_url, signing_key), Sequencer(journal_url, signing_key)
    try:
        assert first.lead()
        assert not second.lead()
        first.close()  # its session ends: the lock is free
        deadline = time.monotonic() + 5
        while not second.lead():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.close()
        second.close()


def test_in_run_order_holds_back_and_releases() -> None:
    rows = [(1, "r", 2), (2, "r", 3), (3, None, None), (4, "s", 1), (5, "r", 1)]
    progress: dict[str, int] = {}
    ordered, held = _in_run_order([(*row, 0.0, "k", "{}") for row in rows], progress)
    assert [row[0] for row in ordered] == [3, 4, 5, 1, 2]
    assert (held, progress) == (0, {"r": 3, "s": 1})


# --- random interleavings ------------------------------------------------------------------

WRITERS, RUNS = 3, ("run-a", "run-b")
# (writer, action); a writer that journals outside a transaction begins one first.
_op = st.tuples(
    st.integers(0, WRITERS - 1),
    st.sampled_from(
        ["begin", "journal run-a", "journal run-a", "journal run-b", "commit", "commit", "rollback", "batch"]
    ),
)
# The interleaving of the first test above: xids taken in one order, commits in the other.
_XID_ORDER_IS_NOT_COMMIT_ORDER = [(0, "begin"), (1, "begin"), (1, "journal run-a"), (1, "commit"), (0, "journal run-a")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_op, max_size=40))
@example(_XID_ORDER_IS_NOT_COMMIT_ORDER)
def test_random_interleavings_chain_each_run_in_commit_order(journal_url: str, signing_key, ops) -> None:
    """Writers begin (taking an xid), journal for runs, commit or roll back in any order, with
    sequencer batches in between; each run's chained entries are its committed entries in
    commit order, each once, and the chain verifies. (A writer never journals for a run
    another open transaction holds: it would wait, as in the test above.)"""
    import psycopg

    with psycopg.connect(journal_url, autocommit=True) as conn:
        conn.execute("TRUNCATE ledger, journal, journal_runs, journal_chained, checkpoints RESTART IDENTITY")
    writers = [Writer(journal_url) for _ in range(WRITERS)]
    sequencer = _leader(journal_url, signing_key)
    open_: dict[int, list[tuple[str, dict]]] = {}  # writer -> what its open transaction journaled
    holder: dict[str, int] = {}  # run -> the writer whose open transaction holds its row
    expected: dict[str, list[dict]] = {run: [] for run in RUNS}
    counter = 0

    def end(w: int, commit: bool) -> None:
        (writers[w].commit if commit else writers[w].rollback)()
        for run, data in open_.pop(w):
            if commit:
                expected[run].append(data)
        for run in [run for run, who in holder.items() if who == w]:
            del holder[run]

    try:
        for w, action in ops:
            if action == "batch":
                sequencer.chain_batch()
            elif action == "begin" and w not in open_:
                writers[w].begin()
                open_[w] = []
            elif action.startswith("journal"):
                run = action.split()[1]
                if holder.get(run, w) != w:
                    continue  # it would wait for the holder (the test above)
                if w not in open_:
                    writers[w].begin()
                    open_[w] = []
                counter += 1
                data = {"w": w, "n": counter}
                writers[w].journal(run, **data)
                open_[w].append((run, data))
                holder[run] = w
            elif action in ("commit", "rollback") and w in open_:
                end(w, action == "commit")
        for w in list(open_):
            end(w, True)
        _drain(sequencer)
        for run in RUNS:
            assert chained(journal_url, run) == expected[run]
        assert journal_left(journal_url) == 0
        assert check_chain(journal_url, signing_key) == sum(len(v) for v in expected.values())
    finally:
        for writer in writers:
            writer.close()
        sequencer.close()
