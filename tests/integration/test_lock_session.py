"""Many accounts' run locks on one connection (a queue-mode `syncsvc run` over every account).

Synchronized on state (the simulators' hold faults taken, pg_locks), checked with plain SQL and
the simulators' ground truth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler
from syncsvc.cvent.client import CventClient
from syncsvc.errors import RunLockedError
from syncsvc.store import db
from syncsvc.store.runlock import LockSession, RunLock, run_lock_key
from tests.integration.test_accounts import CONFIG, _state, _truth
from tests.integration.test_run_e2e import _settings
from tests.integration.test_run_reliability import _held, _hold, _until

pytestmark = pytest.mark.db

SimFactory = Callable[..., AbstractAsyncContextManager[Any]]
ACCOUNTS = ("a", "b")


async def _holders(url: URL) -> dict[str, int]:
    """account -> the backend pid holding its run lock, from pg_locks."""
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        out = {}
        for name in ACCOUNTS:
            key = run_lock_key(name)
            pid = await conn.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2",
                (key >> 32) & 0xFFFF_FFFF,
                key & 0xFFFF_FFFF,
            )
            if pid is not None:
                out[name] = int(pid)
        return out
    finally:
        await conn.close()


async def test_every_accounts_run_lock_on_one_session_survives_its_loss_and_excludes_a_twin(
    simulator: SimFactory, engine: AsyncEngine, db_url: URL
) -> None:
    async with simulator(CONFIG) as sim_a, simulator(CONFIG) as sim_b:
        sims = {"a": sim_a, "b": sim_b}
        session = LockSession(engine)
        async with contextlib.AsyncExitStack() as stack:
            tasks = {}
            for name, sim in sims.items():
                await sim.control({"faults": [_hold("userData.do", "all")]})
                settings = _settings(sim, account=name)
                client = await stack.enter_async_context(CventClient.open(settings))
                runner = scheduler.Runner(settings, engine, client, lock_session=session)
                runner.lock_check_seconds = 0.05
                tasks[name] = asyncio.create_task(runner.run())
            try:
                for sim in sims.values():
                    await _held(sim)
                first = await _holders(db_url)
                # Both accounts' locks, on one backend.
                assert set(first) == set(ACCOUNTS)
                assert len(set(first.values())) == 1

                # A second run of account a is refused on its own connection, and on the
                # shared one too (advisory locks are re-entrant within a session).
                for twin in (RunLock(engine, "a"), RunLock(engine, "a", session)):
                    with pytest.raises(RunLockedError):
                        await twin.acquire(wait=False)

                # The session dies: each run takes its lock again, on one new session.
                conn = await asyncpg.connect(db.libpq_url(db_url))
                try:
                    assert await conn.fetchval("SELECT pg_terminate_backend($1)", first["a"])
                finally:
                    await conn.close()

                async def retaken() -> bool:
                    now = await _holders(db_url)
                    return set(now) == set(ACCOUNTS) and first["a"] not in now.values()

                await _until(retaken, "both run locks taken again")
                assert len(set((await _holders(db_url)).values())) == 1

                for sim in sims.values():
                    await sim.control({"release": True})
                results = {name: await task for name, task in tasks.items()}
            finally:
                for task in tasks.values():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                await session.close()
        for name, sim in sims.items():
            assert results[name].status == "succeeded", results[name].error
            assert await _state(db_url, name) == _truth(sim, 0)
        assert await _holders(db_url) == {}
