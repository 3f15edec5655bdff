"""The queue worker takes a lane's next job as soon as its own job of that lane ends
(syncsvc/worker.py `prompt_worker`), not at its next poll: a real PostgreSQL with procrastinate's
schema, one worker in this process whose poll is an hour and who hears no notification.

Synchronized on state: the worker's fetches are counted as they return, and each step waits for
one of them, never for a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.store import jobs

pytestmark = pytest.mark.db

pytest.importorskip("procrastinate", reason="the queue extra is not installed")

from syncsvc.worker import make_app, prompt_worker  # noqa: E402

WAIT = 60  # a ceiling for a worker that never looks again; an hour's poll would pass it


async def test_a_lanes_next_job_is_taken_when_the_previous_one_ends(
    engine: AsyncEngine, db_url: URL
) -> None:
    await jobs.apply_queue_schema(engine)
    app = make_app(db_url)
    ran: list[int] = []
    go = asyncio.Event()
    both = asyncio.Event()
    idle = asyncio.Event()

    @app.task(name="lane_step", queue="prompt-test")
    async def step(n: int) -> None:
        ran.append(n)
        if n == 1:
            await go.wait()
        if len(ran) == 2:
            both.set()

    async with app.open_async():
        fetch = app.job_manager.fetch_job

        async def counted(*args: Any, **kwargs: Any) -> Any:
            job = await fetch(*args, **kwargs)
            if job is None:
                idle.set()  # the worker found nothing more: it waits for its poll or a wake
            return job

        app.job_manager.fetch_job = counted  # type: ignore[method-assign]
        await step.configure(lock="lane").defer_async(n=1)
        worker = prompt_worker(
            app,
            queues=["prompt-test"],
            concurrency=2,
            fetch_job_polling_interval=3600,
            listen_notify=False,
            install_signal_handlers=False,
            update_heartbeat_interval=3600,
        )
        running = asyncio.create_task(worker.run())
        try:
            # Job 1 is taken and holds the lane; the worker's next fetch finds nothing.
            await asyncio.wait_for(idle.wait(), WAIT)
            assert ran == [1]
            # Job 2 joins the lane while job 1 runs: no fetch could take it before job 1 ends.
            await step.configure(lock="lane").defer_async(n=2)
            go.set()
            await asyncio.wait_for(both.wait(), WAIT)
        finally:
            worker.stop()
            await asyncio.wait_for(running, WAIT)
    assert ran == [1, 2]
