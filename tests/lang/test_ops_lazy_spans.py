"""The .ops builder records offsets; `OpsDocument.spans`/`keys` make each Span when read."""

from __future__ import annotations

import copy
import pickle

from opsdsl.errors import Span
from opsdsl.lang.ops import load_text
from opsdsl.lang.ops.data import DataBuilder, Spans

TEXT = """pack demo version "1.0" owner ops {
  playbook respond severity sev2 {
    step check: http.get {
      with { url: "http://x/\\u00e9", n: [1, 2.5, true] }
      retry 3 exponential initial 1s
    }
  }
}
"""


def test_spans_are_made_from_offsets_when_read():
    document, diagnostics = load_text(TEXT, "d.ops")
    assert document is not None and not diagnostics
    assert isinstance(document.spans, Spans) and isinstance(document.keys, Spans)
    raw = document.spans.raw[("playbooks", "respond", "steps", 0, "with", "n", 1)]
    assert raw == (TEXT.index("2.5"), TEXT.index("2.5") + 3)  # offsets, not a Span
    builder = DataBuilder("d.ops", TEXT)
    as_dict = {path: builder.between(*offsets) for path, offsets in document.spans.raw.items()}
    assert document.spans == as_dict and as_dict == document.spans and dict(document.spans) == as_dict
    assert document.span(("playbooks", "respond", "steps", 0, "with", "n", 1)) == Span("d.ops", 4, 45, 4, 48)
    assert document.key_span(("playbooks", "respond", "steps", 0, "retry", "attempts")) == Span("d.ops", 5, 13, 5, 14)
    assert document.span(("nowhere",)) == document.spans[()]
    again = pickle.loads(pickle.dumps(document))
    assert again.spans == document.spans and again.keys == document.keys
    assert copy.deepcopy(document).span(("metadata", "owner")) == document.span(("metadata", "owner"))


def test_a_duplicate_names_the_first_key_s_line():
    text = 'pack demo version "1.0" owner ops {\n  param a: string\n\n  param a: int\n}\n'
    _, diagnostics = load_text(text, "d.ops")
    (dup,) = [d for d in diagnostics if d.code == "OPS003"]
    assert "first defined at line 2" in dup.message and dup.span.line == 4
