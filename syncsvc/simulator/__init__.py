"""A Conference API simulator that knows the ground truth of every day it serves."""

from __future__ import annotations

from syncsvc.simulator.data import ExpectedChange, SimConfig, Universe
from syncsvc.simulator.server import (
    DEFAULT_TOKENS,
    Fault,
    RateLimit,
    RunningSimulator,
    Simulator,
    TokenSpec,
    run_simulator,
)

__all__ = [
    "DEFAULT_TOKENS",
    "ExpectedChange",
    "Fault",
    "RateLimit",
    "RunningSimulator",
    "SimConfig",
    "Simulator",
    "TokenSpec",
    "Universe",
    "run_simulator",
]
