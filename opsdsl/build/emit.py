"""`--emit`: stop the pipeline after one stage and show its output (like Jinja's `raw=True`)."""

from __future__ import annotations

import json
from pathlib import Path

from opsdsl.errors import OpsdslError
from opsdsl.lang.loader import discover


def emit_stage(paths: list[Path], stage: str) -> str:
    """The model or the plan of each pack under `paths`, as JSON (one document per pack)."""
    from opsdsl.build.compiler import ScopeEntry, build_plan, model_digest, model_dump_full
    from opsdsl.build.pipeline import analyse_file, empty_folders, missing_paths

    missing_paths(paths)
    files = discover(paths)
    analyses = [analyse_file(p, checked=True) for p in files]
    failed = [d for a in analyses for d in a.diagnostics if not a.ok] + empty_folders(paths, files)
    if failed:
        raise OpsdslError("packs have errors; run `opsdsl lint` for details", tuple(failed))
    models = [a.model for a in analyses if a.model is not None]
    scope = [
        ScopeEntry(m.metadata.name, m.metadata.version, model_digest(m), m) for m in models if m.kind == "PolicyPack"
    ]
    out = []
    for model in models:
        if stage == "model":
            out.append(model_dump_full(model))
        elif model.kind != "PolicyPack":
            out.append(build_plan(model, scope))
    return "".join(json.dumps(item, indent=2, sort_keys=True, ensure_ascii=False) + "\n" for item in out)
