"""Runner pools over HTTPS: the claim, heartbeat and result calls of `opsdsl runner
--server URL`, for runners that cannot reach the database (docs/scaleout.md#runner-pools).

The runner only connects out, to `serve`; each call carries a runner token
(`opsdsl runner-token --pool NAME --label L`) that is good for one pool. The server does
on the runner's behalf exactly what a runner with the database does
(opsdsl.runtime.pool_runner), with the claimant named `RUNNER@LABEL` so one token's holder
cannot write another's results. Bodies are hostile until checked: a bad one is a 400.

    POST /v1/runners/{pool}/claim                    {runner, limit, lease} → {claims: [...]}
    POST /v1/runners/{pool}/dispatch/{id}/heartbeat  {runner, epoch, lease} → {ok}
    POST /v1/runners/{pool}/dispatch/{id}/result     {runner, epoch, state, outputs, error, retryable} → {ok}
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from opsdsl.runtime import dispatch as D
from opsdsl.runtime import pool_runner as P
from opsdsl.serve.api import problem_response

_RUNNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
MAX_ERROR = 64 * 1024  # characters of a result's error kept
# The runner calls' own body limit, above `--max-body` (an event's): a result is a step's
# outputs, up to 1 MiB of stdout and of stderr, each at most 6 bytes a character in JSON. A
# runner whose result is still refused (413) posts `failed`: "result too large (N bytes)".
MAX_BODY = 16 * 1024 * 1024
MAX_LEASE = 3600.0


class BadBody(Exception):
    pass


class RunnerApi:
    """The three calls, on one thread with its own connection to the state database."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="opsdsl-runners")
        self._store: Any = None

    async def close(self, app: web.Application) -> None:
        self.thread.shutdown(wait=True)
        if self._store is not None:
            self._store.close()

    def _in_store(self, work: Any, *args: Any) -> Any:
        if self._store is None:
            from opsdsl.runtime.store import Store

            self._store = Store(self.state, create=False)
        return work(self._store, *args)

    async def _call(self, work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._in_store, work, *args)

    async def _caller(self, request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        """(claimant, body) of an authorised call for the path's pool, else the refusal."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            return problem_response(401, "a runner token is required (Authorization: Bearer …)")
        found = await self._call(D.runner_token, token)
        if found is None:
            return problem_response(401, "unknown or revoked runner token")
        label, pool = found
        if request.match_info["pool"] != pool:
            return problem_response(403, f"this token is for pool {pool}")
        try:
            body = json.loads(await request.clone(client_max_size=MAX_BODY).read())
        except (ValueError, UnicodeDecodeError):
            return problem_response(400, "the body is not JSON")
        if not isinstance(body, dict):
            return problem_response(400, "the body is not a JSON object")
        runner = body.get("runner")
        if not isinstance(runner, str) or not _RUNNER.match(runner):
            return problem_response(400, "runner: a name of letters, digits, `_`, `.`, `:` and `-`")
        return f"{runner}@{label}", body

    async def claim(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        claimant, body = caller
        try:
            limit = _integer(body, "limit", 1, 100)
            lease = _seconds(body, "lease")
        except BadBody as error:
            return problem_response(400, str(error))
        pool = request.match_info["pool"]
        claims = await self._call(P.claim_rows, pool, claimant, limit, lease)
        return web.json_response({"claims": [claim.to_dict() for claim in claims]})

    async def heartbeat(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        claimant, body = caller
        try:
            row_id = _row(request)
            epoch = _integer(body, "epoch", 1, 2**62)
            lease = _seconds(body, "lease")
        except BadBody as error:
            return problem_response(400, str(error))
        pool = request.match_info["pool"]
        ok = await self._call(P.renew_lease, row_id, claimant, epoch, lease, pool)
        return web.json_response({"ok": ok})

    async def result(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        claimant, body = caller
        try:
            row_id = _row(request)
            epoch = _integer(body, "epoch", 1, 2**62)
            state = body.get("state")
            if state not in (D.DONE, D.FAILED):
                raise BadBody("state: done or failed")
            outputs = body.get("outputs")
            if not isinstance(outputs, dict):
                raise BadBody("outputs: an object")
            error = body.get("error")
            if error is not None and not isinstance(error, str):
                raise BadBody("error: a string or null")
            retryable = body.get("retryable")
            if not isinstance(retryable, bool):
                raise BadBody("retryable: true or false")
        except BadBody as problem:
            return problem_response(400, str(problem))
        pool = request.match_info["pool"]
        error = error[:MAX_ERROR] if error else error
        ok = await self._call(P.write_result, row_id, claimant, epoch, state, outputs, error, retryable, pool)
        return web.json_response({"ok": ok})


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadBody(f"{name}: an integer from {low} to {high}")
    return value


def _seconds(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_LEASE:
        raise BadBody(f"{name}: seconds from 1 to {MAX_LEASE:g}")
    return float(value)


def _row(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit() or len(text) > 18:
        raise BadBody("no such dispatch")
    return int(text)


def add_routes(app: web.Application, server: Any) -> RunnerApi:
    api = RunnerApi(server.service.runtime.state)
    app.router.add_post("/v1/runners/{pool}/claim", api.claim)
    app.router.add_post("/v1/runners/{pool}/dispatch/{id}/heartbeat", api.heartbeat)
    app.router.add_post("/v1/runners/{pool}/dispatch/{id}/result", api.result)
    app.on_cleanup.append(api.close)
    return api
