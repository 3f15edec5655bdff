"""A webhook receiver written for the tests: a real HTTP server on loopback that verifies every
request with the `standardwebhooks` verifier and records every delivered seq.

It commits (records) a batch before it answers, like a receiver that writes to its database and
then replies, and it can be scripted to misbehave request by request: answer 500, answer 429 with
Retry-After, never answer (the sender times out; nothing is recorded), or record the batch and
then hold the answer until released (so the test can SIGKILL the sender mid-batch).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Request:
    at: float
    msg_id: str
    action: str
    seqs: list[int] = field(default_factory=list)


class Receiver:
    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.script: deque[str] = deque()  # actions for the next requests; default "ok"
        self.requests: list[Request] = []
        self.accepted: list[tuple[str, list[int]]] = []  # (webhook-id, seqs) in arrival order
        self.bad_signatures = 0
        self.held = asyncio.Event()  # a "hold" request has recorded its batch and is waiting
        self.release = asyncio.Event()
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def seqs(self) -> list[int]:
        return [s for _, seqs in self.accepted for s in seqs]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_requests(self, n: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while len(self.requests) < n:
            self._arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(self.requests)} of {n} requests arrived")
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                continue

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400, text="bad signature")
        msg_id = request.headers["webhook-id"]
        action = self.script.popleft() if self.script else "ok"
        seqs = [c["seq"] for c in payload["data"]["changes"]] if "data" in payload else []
        req = Request(time.monotonic(), msg_id, action, seqs)
        self.requests.append(req)
        self._arrived.set()
        # A request after a timed-out one means the sender gave up on it: let it go.
        if action == "500":
            return web.Response(status=500)
        if action.startswith("429"):
            return web.Response(status=429, headers={"Retry-After": action.split(":")[1]})
        if action == "timeout":
            # Never answer in time: nothing is recorded, the sender times out and retries.
            n = len(self.requests)
            while len(self.requests) == n:
                self._arrived.clear()
                await self._arrived.wait()
            return web.Response(status=200)
        self.accepted.append((msg_id, seqs))
        if action == "hold":
            self.held.set()
            await self.release.wait()
        return web.json_response({"ok": True})


def changes_of(body: bytes) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = json.loads(body)["data"]["changes"]
    return changes
