"""Prometheus metrics of runs and units. Labels are fixed vocabularies: never a token or a GUID."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    """One registry per process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter("syncsvc_runs", "Runs by final status.", ["status"], registry=r)
        self.units = Counter(
            "syncsvc_units",
            "Units of work by resource and final status.",
            ["resource", "status"],
            registry=r,
        )
        self.records = Counter(
            "syncsvc_records", "Records parsed from dumps.", ["entity"], registry=r
        )
        self.changes = Counter(
            "syncsvc_changes", "Change records emitted.", ["entity", "op"], registry=r
        )
        self.bytes = Counter("syncsvc_fetched_bytes", "XML bytes parsed from dumps.", registry=r)
        self.retries = Counter("syncsvc_retries", "API calls retried.", registry=r)
        self.rate_limit_wait = Counter(
            "syncsvc_rate_limit_wait_seconds",
            "Seconds spent waiting for the rate budget before a request could start.",
            registry=r,
        )
        self.last_success = Gauge(
            "syncsvc_last_success_timestamp_seconds",
            "Unix time the last succeeded run finished.",
            registry=r,
        )
        self.last_finished = Gauge(
            "syncsvc_last_run_finished_timestamp_seconds",
            "Unix time the last run finished, whatever its status.",
            registry=r,
        )
        self.last_duration = Gauge(
            "syncsvc_last_run_duration_seconds", "Wall seconds of the last run.", registry=r
        )
        self.running = Gauge(
            "syncsvc_run_in_progress",
            "Runs in progress (1 while a run is; several accounts may run at once).",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
