"""The run's budget: the start window's arithmetic, in-flight places, the pause and the AIMD rate,
on a clock the tests advance (no test waits in real time)."""

from __future__ import annotations

import asyncio

import pytest

from syncsvc.budget import RATE_SAFETY, Budget, StartWindow
from syncsvc.settings import Settings


class Clock:
    """A clock whose sleep advances it: the budget's waits happen in no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def budget(rate: int = 2, period: float = 1.0, in_flight: int = 10) -> tuple[Budget, Clock]:
    clock = Clock()
    return Budget(rate, period, in_flight, clock=clock, sleep=clock.sleep), clock


def test_the_window_allows_limit_starts_then_waits_for_the_oldest_to_leave() -> None:
    window = StartWindow(1.0)
    assert window.delay(0.0, 2) == 0.0
    window.take(0.0)
    window.take(0.25)
    assert window.delay(0.5, 2) == pytest.approx(0.5)  # until the start at 0 leaves
    assert window.delay(1.0, 2) == 0.0  # a start exactly one window old no longer counts
    window.take(1.0)
    assert window.delay(1.0, 2) == pytest.approx(0.25)


def test_a_lowered_limit_waits_for_the_start_that_leaves_it_room() -> None:
    window = StartWindow(1.0)
    for t in (0.0, 0.25, 0.5):
        window.take(t)
    # Three starts in the window and a limit of one: the two older ones must leave too.
    assert window.delay(0.5, 1) == pytest.approx(1.0)
    assert window.delay(0.5, 2) == pytest.approx(0.75)


async def test_starts_keep_to_rate_per_period_in_arrival_order() -> None:
    b, clock = budget(rate=2, period=1.0)
    starts: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        async with b.request():
            starts.append((i, clock.now))

    for i in range(5):
        await one(i)
    assert starts == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (4, 2.0)]

    b2, clock2 = budget(rate=2, period=1.0)
    order: list[int] = []

    async def timed(i: int) -> None:
        async with b2.request():
            order.append(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(6):
            tg.create_task(timed(i))
    assert order == list(range(6))
    assert clock2.now == pytest.approx(2.0)


async def test_request_yields_the_seconds_waited_for_the_start() -> None:
    b, _ = budget(rate=1, period=1.0)
    async with b.request() as waited:
        assert waited == 0.0
    async with b.request() as waited:
        assert waited == pytest.approx(1.0)


async def test_no_more_than_max_in_flight_requests_hold_a_place() -> None:
    b, _ = budget(rate=100, in_flight=2)
    inside: list[int] = []
    release = asyncio.Event()

    async def one(i: int) -> None:
        async with b.request():
            inside.append(i)
            await release.wait()

    tasks = [asyncio.create_task(one(i)) for i in range(3)]
    while len(inside) < 2:  # noqa: ASYNC110 (synchronized on state, no real time passes)
        await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)  # the third has every chance to get in: it must not
    assert inside == [0, 1]
    release.set()
    await asyncio.gather(*tasks)
    assert inside == [0, 1, 2]


async def test_back_off_pauses_every_start_for_at_least_a_period() -> None:
    b, _ = budget(rate=4, period=1.0)
    b.back_off(0.1)  # shorter than the period: the period is the floor
    assert b.delay() == pytest.approx(1.0)
    async with b.request() as waited:
        assert waited == pytest.approx(1.0)
    b.back_off(5.0)
    assert b.delay() == pytest.approx(5.0)


def test_the_rate_halves_once_per_pause_and_climbs_back_one_per_rate_successes() -> None:
    b, clock = budget(rate=8, period=1.0)
    b.back_off(2.0)
    assert b.rate == 4
    b.back_off(2.0)  # a call that was in flight when the budget backed off: nothing new
    assert b.rate == 4
    clock.now = 2.5  # the pause is over: a new refusal halves again
    b.back_off(0.0)
    assert b.rate == 2
    for _ in range(2):
        b.succeeded()
    assert b.rate == 3
    for _ in range(3):
        b.succeeded()
    assert b.rate == 4
    for _ in range(100):
        b.succeeded()
    assert b.rate == b.configured_rate == 8  # never above the configured rate


def test_the_rate_never_drops_below_one_start() -> None:
    b, _ = budget(rate=1)
    b.back_off(0.0)
    assert b.rate == 1


def test_from_settings_takes_whole_starts_the_period_and_the_in_flight_bound() -> None:
    settings = Settings().replace(rate_limit=2.7, rate_period=3.0, max_concurrency=5)
    b = Budget.from_settings(settings)
    assert (b.rate, b.period, b.max_in_flight) == (2, 3.0, 5)
    assert Budget.from_settings(settings.replace(rate_limit=0.5)).rate == 1
    assert RATE_SAFETY > 1.0  # the window is stretched, never shrunk


def test_a_budget_refuses_a_rate_or_place_count_under_one() -> None:
    with pytest.raises(ValueError, match="rate >= 1"):
        Budget(0, 1.0, 1)
    with pytest.raises(ValueError, match="max_in_flight >= 1"):
        Budget(1, 1.0, 0)
