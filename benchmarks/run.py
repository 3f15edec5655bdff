"""End-to-end benchmark: syncsvc against the simulator over HTTP, the floor and the peers.

The simulator runs in its own process in cache mode (each dump rendered once to a file, then sent
with sendfile) and is warmed before anything is timed. syncsvc runs as `syncsvc run` in a
subprocess, so the figures are the product's and its peak RSS is its own (its VmHWM, sampled
from /proc; see `run_measured`).
Each scenario gets a fresh database on the given server (or an embedded PostgreSQL), dropped
afterwards. Prints figures; never passes or fails on time. It exits non-zero only when something
crashed or a change count differs from the simulator's ground truth.

    .venv/bin/python benchmarks/run.py --scenario small \
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--no-floor] [--no-peers]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import database_url, floor_day

from syncsvc import catalog
from syncsvc.simulator.data import SimConfig, Universe

TOKEN = "sim-account-token"  # noqa: S105 (the simulator's built-in account token)
DATA = (catalog.USERS, catalog.SESSIONS, catalog.EXHIBITORS)


@dataclass(frozen=True)
class Scenario:
    name: str
    config: SimConfig
    days: tuple[int, ...]  # days synced in order into one database; day 0 is the first snapshot
    event_all: bool = True
    rate_limit: float = 1000.0  # request starts per second granted to syncsvc
    max_concurrency: int = 4
    labels: tuple[str, ...] = ()  # one row label per day


# About 2% of live records change per day: updates 1.2%, deletes 0.3%, inserts 0.4%, rekeys 0.1%.
INCR_RATES = {"update_rate": 0.012, "delete_rate": 0.003, "insert_rate": 0.004}
INCR_RATES_R = {**INCR_RATES, "recreate_rate": 0.001}

_1M = SimConfig(
    seed=11,
    events=100,
    users_per_event=10_000,
    sessions_per_event=200,
    exhibitors_per_event=50,
    new_event_every=0,  # a new event on day 1 would be 10,000 inserts the rates did not ask for
    **INCR_RATES_R,
)

SCENARIOS: dict[str, Scenario] = {
    "small": Scenario(
        "small",
        SimConfig(seed=3, events=10, users_per_event=1000, new_event_every=0, **INCR_RATES_R),
        days=(0, 1),
        labels=("small", "small-incr"),
    ),
    "full-1m": Scenario("full-1m", _1M, days=(0,), labels=("full-1m",)),
    "incr-1m": Scenario("incr-1m", _1M, days=(0, 1), labels=("full-1m", "incr-1m")),
    # Not in the default set: a tenth of full-1m for profiling (`--profile DIR`).
    "mid": Scenario(
        "mid",
        replace(_1M, events=10, users_per_event=10_000),
        days=(0, 1),
        labels=("mid", "mid-incr"),
    ),
    "many-events": Scenario(
        "many-events",
        SimConfig(
            seed=5,
            events=2000,
            users_per_event=20,
            sessions_per_event=4,
            exhibitors_per_event=2,
            new_event_every=0,
        ),
        days=(0,),
        event_all=False,
        rate_limit=100.0,
        labels=("many-events",),
    ),
}


@dataclass
class Row:
    scenario: str
    records: int = 0
    wall: float = 0.0
    rss_mb: float = 0.0
    tree_mb: float = 0.0  # peak of the summed RSS of the process and its parse workers
    pss_mb: float = 0.0  # peak of the summed PSS of the tree (a shared page counts once)
    cgroup_mb: float | None = None  # the tree's own memory cgroup's peak, as a container limit
    cgroup_note: str = ""  # that peak's make-up, and the limit's events with --memory-limit
    cpu: float = 0.0  # CPU seconds of syncsvc and its parse workers (not the database's)
    pg_cpu: float = 0.0  # CPU seconds PostgreSQL spent meanwhile
    main_cpu: float = 0.0  # CPU seconds of syncsvc's own process (the rest: its workers)
    steps: str = ""  # the slowest unit's step seconds
    fetch_parse: float = 0.0
    stage: float = 0.0
    apply: float = 0.0
    changes: int = 0
    expected_changes: int | None = None
    status: str = ""
    note: str = ""
    floor: float | None = None
    peers: dict[str, Any] = field(default_factory=dict)


# --- the simulator in its own process ----------------------------------------------------------


@contextlib.asynccontextmanager
async def simulator(config: SimConfig, cache_dir: Path) -> AsyncIterator[str]:
    cmd = [
        sys.executable,
        "-m",
        "syncsvc",
        "simulate",
        "--port",
        "0",
        "--cache-dir",
        str(cache_dir),
        "--events",
        str(config.events),
        "--users-per-event",
        str(config.users_per_event),
        "--sessions-per-event",
        str(config.sessions_per_event),
        "--exhibitors-per-event",
        str(config.exhibitors_per_event),
        "--seed",
        str(config.seed),
        "--update-rate",
        str(config.update_rate),
        "--delete-rate",
        str(config.delete_rate),
        "--insert-rate",
        str(config.insert_rate),
        "--recreate-rate",
        str(config.recreate_rate),
        "--new-event-every",
        str(config.new_event_every),
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("simulator serving"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        yield line.split()[2]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def sim_config_matches(config: SimConfig) -> None:
    """The CLI exposes only some SimConfig knobs: refuse a scenario the subprocess cannot serve."""
    cli = SimConfig(
        seed=config.seed,
        events=config.events,
        users_per_event=config.users_per_event,
        sessions_per_event=config.sessions_per_event,
        exhibitors_per_event=config.exhibitors_per_event,
        update_rate=config.update_rate,
        delete_rate=config.delete_rate,
        insert_rate=config.insert_rate,
        recreate_rate=config.recreate_rate,
        new_event_every=config.new_event_every,
    )
    if replace(cli, day=config.day) != config:
        raise SystemExit(f"scenario config {config} uses knobs `syncsvc simulate` does not take")


async def post(session: aiohttp.ClientSession, url: str, form: dict[str, str]) -> bytes:
    async with session.post(url, data=form) as resp:
        body = await resp.read()
        if resp.status != 200 or b"<responseCode>0</responseCode>" not in body[:400]:
            raise RuntimeError(f"warm-up {url} {form.get('event')}: HTTP {resp.status}")
        return body


async def set_day(base_url: str, day: int) -> None:
    root = base_url.split("/api/")[0]
    async with aiohttp.ClientSession() as s, s.post(root + "/_sim/control", json={"day": day}) as r:
        if r.status != 200:
            raise RuntimeError(f"control: HTTP {r.status} {await r.text()}")


async def warm(base_url: str, scenario: Scenario, day: int) -> None:
    """Request every dump the run will request, so the timed run only reads cached files."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    conn = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as s:
        events_xml = await post(s, base_url + catalog.EVENTS.path, {"apiToken": TOKEN})
        guids = [g.split(b"</eventGUID>")[0].decode() for g in events_xml.split(b"<eventGUID>")[1:]]
        sem = asyncio.Semaphore(8)

        async def one(res: catalog.Resource, event: str) -> None:
            async with sem:
                await post(s, base_url + res.path, {"apiToken": TOKEN, "event": event})

        async with asyncio.TaskGroup() as tg:
            for res in DATA:
                if scenario.event_all and res.allows_event_all:
                    tg.create_task(one(res, catalog.EVENT_ALL))
                else:
                    for g in guids:
                        tg.create_task(one(res, g))


# --- databases ---------------------------------------------------------------------------------


@contextlib.contextmanager
def server_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="syncsvc-bench-pg-") as tmp:
        srv = pgserver.get_server(tmp, cleanup_mode="stop")
        try:
            yield srv.get_uri()
        finally:
            srv.cleanup()


@contextlib.asynccontextmanager
async def scratch_database(url: str, prefix: str) -> AsyncIterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url(url, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# --- syncsvc as a subprocess -------------------------------------------------------------------


def syncsvc_env(scenario: Scenario, base_url: str, db_url: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")
    }  # nothing from the caller's own setup leaks in
    env.update(
        SYNCSVC_BASE_URL=base_url,
        SYNCSVC_API_TOKEN=TOKEN,
        SYNCSVC_DATABASE_URL=db_url,
        SYNCSVC_RATE_LIMIT=str(scenario.rate_limit),
        SYNCSVC_MAX_CONCURRENCY=str(scenario.max_concurrency),
        SYNCSVC_USE_EVENT_ALL="true" if scenario.event_all else "false",
        SYNCSVC_PARSE_IN_WORKER=PARSE_IN_WORKER,
        SYNCSVC_LOG_LEVEL="warning",
        SYNCSVC_LOG_FORMAT="json",
        # Deletes and rekeys of a 2% day never come near the hold; keep it out of the picture.
        SYNCSVC_DELETE_HOLD_RATIO="1.0",
    )
    return env


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


LAST_CPU = 0.0  # CPU seconds of the last measured command and its descendants
LAST_MAIN_CPU = 0.0  # ... of the command's own process
TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(path: Path) -> tuple[str, list[str]]:
    """(command name, the fields after it) of a /proc/PID/stat file; raises OSError."""
    text = path.read_text()
    head, rest = text.rsplit(")", 1)
    return head.split("(", 1)[1], rest.split()


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process so far: the postmaster's own and reaped
    children's, plus the live ones' (a delta around a run is what the database spent)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, fields = proc_stat(stat)
        except (OSError, IndexError, ValueError):
            continue
        if comm not in ("postgres", "postmaster"):
            continue
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += (utime + stime + cutime + cstime) / TICK
    return total


def tree_sample(pid: int, cpu: dict[int, float]) -> tuple[float, float]:
    """(VmRSS, PSS) of `pid` and its descendants, each summed, in MB; records each one's CPU
    seconds so far in `cpu` (pid -> seconds).

    Summed RSS counts a page the processes share (the first worker's imports, libraries) once per
    process; PSS splits each shared page between its sharers, so its sum counts it once.
    """
    total = pss = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
            _, fields = proc_stat(Path(f"/proc/{p}/stat"))
            cpu[p] = (int(fields[11]) + int(fields[12])) / TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            continue
    return total, pss


class MemoryCgroup:
    """A memory cgroup of its own for the measured process tree: its peak charge is what a
    container's memory limit would see (anonymous memory, page cache it brings in, kernel
    buffers), each page once. Needs a writable cgroup hierarchy (v1 `memory` or v2 with the
    memory controller); elsewhere `peak_mb()` is None and the PSS figure stands alone."""

    def __init__(self, limit_mb: float | None = None) -> None:
        self.path: Path | None = None
        self.peak_file = ""
        self.v2 = False
        self.highest = 0  # the highest memory.current sampled, and memory.stat then (v2)
        self.at_highest: dict[str, int] = {}
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/memory")
        mine = Path("/proc/self/cgroup").read_text().splitlines()
        name = f"syncsvc-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            if (v2 / "cgroup.controllers").exists() and "memory" in (
                v2 / "cgroup.subtree_control"
            ).read_text().split():
                own = next(line.split(":", 2)[2] for line in mine if line.startswith("0::"))
                self.path, self.peak_file = v2 / own.lstrip("/") / name, "memory.peak"
                self.v2 = True
            elif v1.is_dir():
                own = next(line.split(":", 2)[2] for line in mine if ":memory:" in line)
                self.path, self.peak_file = v1 / own.lstrip("/") / name, "memory.max_usage_in_bytes"
            if self.path is not None:
                self.path.mkdir()
                if limit_mb is not None:
                    # A container's limit: past it the kernel reclaims the tree's page cache,
                    # and kills a process only when what is left does not fit.
                    limit_file = "memory.max" if self.v2 else "memory.limit_in_bytes"
                    (self.path / limit_file).write_text(str(int(limit_mb * 2**20)))
        except (OSError, StopIteration):
            self.path = None

    def _read(self, name: str) -> str:
        assert self.path is not None
        return (self.path / name).read_text()

    def _pairs(self, name: str) -> dict[str, str]:
        """A cgroup file of `key value` lines (memory.stat, memory.events, ...)."""
        words = self._read(name).split()
        return dict(zip(words[::2], words[1::2], strict=True))

    def sample(self) -> None:
        """Note what the charge is made of when it is the highest seen: anonymous memory, page
        cache, kernel, socket buffers (to the sampling's resolution)."""
        if self.path is None:
            return
        try:
            current = int(self._read("memory.current" if self.v2 else "memory.usage_in_bytes"))
            if current <= self.highest:
                return
            stat = {k: int(v) for k, v in self._pairs("memory.stat").items()}
            if self.v2:
                parts = {k: stat.get(k, 0) for k in ("anon", "file", "kernel", "sock")}
            else:  # v1 names; kernel and TCP buffers have files of their own
                parts = {
                    "anon": stat.get("total_rss", stat.get("rss", 0)),
                    "file": stat.get("total_cache", stat.get("cache", 0)),
                    "kernel": int(self._read("memory.kmem.usage_in_bytes")),
                    "sock": int(self._read("memory.kmem.tcp.usage_in_bytes")),
                }
            self.highest, self.at_highest = current, parts
        except (OSError, ValueError):
            return

    def note(self) -> str:
        """The make-up of the highest sample, and the limit's events."""
        if self.path is None or not self.at_highest:
            return ""
        mb = {k: v / 2**20 for k, v in self.at_highest.items()}
        out = (
            f"highest sample {self.highest / 2**20:.0f} MB: anon {mb['anon']:.0f}, page cache"
            f" {mb['file']:.0f}, kernel {mb['kernel']:.0f}, sockets {mb['sock']:.0f}"
        )
        try:
            if self.v2:
                limit = self._read("memory.max").strip()
                events = self._pairs("memory.events")
                hits, kills = events.get("max", "?"), events.get("oom_kill", "?")
            else:
                limit = self._read("memory.limit_in_bytes").strip()
                hits = self._read("memory.failcnt").strip()
                kills = self._pairs("memory.oom_control").get("oom_kill", "?")
            if limit != "max" and int(limit) < 2**50:
                out += (
                    f"; under a {int(limit) / 2**20:.0f} MB limit: reclaimed at the limit"
                    f" {hits} times, OOM kills {kills}"
                )
        except (OSError, ValueError):
            pass
        return out

    def wrap(self, cmd: list[str]) -> list[str]:
        """cmd, started by a shell that first moves itself (and so all it will exec and start)
        into the cgroup: nothing the process allocates is charged elsewhere."""
        if self.path is None:
            return cmd
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *cmd]

    def peak_mb(self) -> float | None:
        if self.path is None:
            return None
        try:
            return int((self.path / self.peak_file).read_text()) / 2**20
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()


LAST_PSS = 0.0  # the last run_measured's peak summed PSS, MB
LAST_CGROUP: float | None = None  # and its cgroup's peak, MB (None: no cgroup could be made)
LAST_CGROUP_NOTE = ""  # and that peak's make-up (MemoryCgroup.note)
MEMORY_LIMIT_MB: float | None = None  # --memory-limit: the measured tree's cgroup memory.max


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float, float, str]:
    """Run cmd; return (exit code, wall s, peak RSS MB of that process, peak RSS MB of it and
    its descendants summed, stderr tail).

    The peak is the process's own VmHWM, sampled from /proc while it runs. Not wait4's
    ru_maxrss: Linux carries the parent's high-water mark across fork+exec into it, so a
    child of a large harness would report the harness's peak.
    """
    with tempfile.TemporaryFile() as err:
        group = MemoryCgroup(MEMORY_LIMIT_MB)
        started = time.perf_counter()
        proc = subprocess.Popen(group.wrap(cmd), env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak = tree = pss = 0.0
        cpu: dict[int, float] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
            rss_now, pss_now = tree_sample(proc.pid, cpu)
            tree, pss = max(tree, rss_now), max(pss, pss_now)
            group.sample()
            time.sleep(0.05)
        wall = time.perf_counter() - started
        global LAST_PSS, LAST_CGROUP, LAST_CGROUP_NOTE
        LAST_PSS, LAST_CGROUP, LAST_CGROUP_NOTE = pss, group.peak_mb(), group.note()
        group.remove()
        # CPU of the tree: wait4's, which counts the process and the descendants it and they
        # reaped (the parse workers: the first is its child and reaps the ones it forked);
        # descendants sampled but never reaped added. Its own process: as last sampled.
        global LAST_CPU, LAST_MAIN_CPU
        LAST_MAIN_CPU = cpu.pop(proc.pid, 0.0)
        LAST_CPU = max(usage.ru_utime + usage.ru_stime, LAST_MAIN_CPU + sum(cpu.values()))
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace")
    return proc.returncode, wall, peak, max(tree, peak), tail


async def run_stats(db_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        run = await conn.fetchrow("SELECT id, status, records FROM runs ORDER BY id DESC LIMIT 1")
        split = await conn.fetchrow(
            "SELECT coalesce(sum(fetch_seconds), 0) f, coalesce(sum(stage_seconds), 0) s,"
            " coalesce(sum(apply_seconds), 0) a, count(*) n FROM fetches WHERE run_id = $1",
            run["id"],
        )
        changes = await conn.fetchval("SELECT count(*) FROM changes WHERE run_id = $1", run["id"])
        steps = await conn.fetchval(
            "SELECT resource || ' ' || scope || ': ' || (details -> 'step_seconds')::text"
            " FROM fetches WHERE run_id = $1 ORDER BY apply_seconds DESC NULLS LAST LIMIT 1",
            run["id"],
        )
        return {"run": dict(run), "split": dict(split), "changes": changes, "steps": steps}
    finally:
        await conn.close()


PARSE_IN_WORKER = "always"  # --parse-in-worker: SYNCSVC_PARSE_IN_WORKER for the runs
PROFILE: str | None = None  # --profile DIR: each syncsvc run under py-spy, collapsed stacks


async def sync_day(scenario: Scenario, base_url: str, db_url: str, label: str) -> Row:
    env = syncsvc_env(scenario, base_url, db_url)
    cmd = [sys.executable, "-m", "syncsvc", "run"]
    if PROFILE:
        # py-spy samples the run from outside (subprocesses too); RSS is then py-spy's own.
        out = Path(PROFILE) / f"{label}.txt"
        cmd = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--subprocesses",
            "--format",
            "raw",
            "-o",
            str(out),
            "--",
            *cmd,
        ]
    pg_before = postgres_cpu()
    code, wall, rss, tree, tail = await asyncio.to_thread(run_measured, cmd, env)
    row = Row(label, wall=wall, rss_mb=rss, tree_mb=tree, cpu=LAST_CPU, main_cpu=LAST_MAIN_CPU)
    row.pss_mb, row.cgroup_mb, row.cgroup_note = LAST_PSS, LAST_CGROUP, LAST_CGROUP_NOTE
    row.pg_cpu = postgres_cpu() - pg_before
    if code != 0:
        row.status = f"exit {code}"
        row.note = tail.strip().splitlines()[-1] if tail.strip() else ""
        return row
    stats = await run_stats(db_url)
    row.records = stats["run"]["records"]
    row.status = stats["run"]["status"]
    # Units overlap in time, so these are sums of per-unit seconds, not shares of the wall.
    row.fetch_parse = stats["split"]["f"]
    row.stage = stats["split"]["s"]
    row.apply = stats["split"]["a"]
    row.changes = stats["changes"]
    row.steps = stats["steps"] or ""
    if scenario.name == "many-events":
        units = stats["split"]["n"] + 1  # event.do is a request too
        bound = units / scenario.rate_limit
        row.note = f"{units} requests; rate bound {bound:.1f} s; wall/bound {wall / bound:.2f}"
    return row


def day_files(cache: Path, day: int) -> list[Path]:
    return list(cache.glob(f"*-d{day}.xml"))


# --- one scenario ------------------------------------------------------------------------------


async def run_scenario(
    scenario: Scenario, url: str, *, with_floor: bool, with_peers: bool
) -> list[Row]:
    sim_config_matches(scenario.config)
    rows: list[Row] = []
    universe = Universe(scenario.config)
    with tempfile.TemporaryDirectory(prefix="syncsvc-bench-cache-") as tmp:
        cache = Path(tmp)
        async with (
            simulator(scenario.config, cache) as base_url,
            scratch_database(url, "syncsvc_bench") as db_url,
        ):
            migrate = [sys.executable, "-m", "syncsvc", "db", "upgrade"]
            env = syncsvc_env(scenario, base_url, db_url)
            code, _, _, _, tail = await asyncio.to_thread(run_measured, migrate, env)
            if code:
                raise RuntimeError(f"db upgrade failed: {tail}")
            floor_state: dict[str, Any] = {}
            peer_state: dict[str, Any] = {}
            for day, label in zip(scenario.days, scenario.labels, strict=True):
                await set_day(base_url, day)
                await warm(base_url, scenario, day)
                row = await sync_day(scenario, base_url, db_url, label)
                if day > 0 and row.status == "succeeded":
                    row.expected_changes = len(universe.expected_changes(day - 1, day))
                rows.append(row)
                files = sorted(await asyncio.to_thread(day_files, cache, day))
                if with_floor and scenario.event_all:
                    seconds = await floor_day(url, files, floor_state)
                    row.floor = seconds
                if with_peers and scenario.event_all:
                    from peers import peers_day

                    row.peers = await peers_day(url, files, peer_state)
            for state in (floor_state, peer_state):
                for closer in state.get("_close", []):
                    await closer()
    return rows


# --- the table ---------------------------------------------------------------------------------


def fmt_table(rows: list[Row]) -> str:
    head = (
        f"{'scenario':<12} {'records':>10} {'wall s':>8} {'rec/s':>9} {'RSS MB':>7} "
        f"{'fetch+parse':>11} {'stage':>7} {'diff+apply':>10} {'changes':>8} "
        f"{'floor s':>8} {'vs floor':>8}  peers: wall, speed syncsvc/peer, RSS, live rows"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        rate = r.records / r.wall if r.wall else 0
        floor = f"{r.floor:8.1f} {r.floor / r.wall:7.2f}x" if r.floor else f"{'-':>8} {'-':>8}"
        # syncsvc/floor as a throughput ratio: floor seconds over syncsvc seconds.
        peers = "; ".join(
            (
                f"{k} {v['seconds']:.1f} s {v['seconds'] / r.wall:.1f}x "
                f"{v['rss_mb']:.0f} MB rows={v['rows']:,}"
                if isinstance(v, dict)
                else f"{k} {v}"
            )
            for k, v in r.peers.items()
        )
        changes = str(r.changes)
        if r.expected_changes is not None:
            changes += "" if r.changes == r.expected_changes else f" (!= {r.expected_changes})"
        out.append(
            f"{r.scenario:<12} {r.records:>10,} {r.wall:>8.1f} {rate:>9,.0f} {r.rss_mb:>7.0f} "
            f"{r.fetch_parse:>11.1f} {r.stage:>7.1f} {r.apply:>10.1f} {changes:>8} "
            f"{floor}  {peers or '-'}"
        )
        if r.status != "succeeded" or r.note:
            out.append(f"{'':<12} status {r.status} {r.note}")
        if r.pss_mb:
            group = "no cgroup" if r.cgroup_mb is None else f"{r.cgroup_mb:.0f} MB"
            out.append(
                f"{'':<12} the whole tree as a container sees it: its memory cgroup's peak"
                f" {group}; peak summed PSS {r.pss_mb:.0f} MB"
            )
            if r.cgroup_note:
                out.append(f"{'':<12} {r.cgroup_note}")
        if r.tree_mb:
            out.append(
                f"{'':<12} peak RSS with the parse workers (summed): {r.tree_mb:.0f} MB;"
                f" CPU of syncsvc and its workers: {r.cpu:.1f} s ({r.main_cpu:.1f} s in its own"
                f" process); of PostgreSQL: {r.pg_cpu:.1f} s"
            )
        if r.steps:
            out.append(f"{'':<12} slowest unit, seconds per step: {r.steps}")
    return "\n".join(out)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"Python {sys.version.split()[0]}"
    )


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--database-url", help="a PostgreSQL server URL (default: embedded)")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--profile", metavar="DIR", help="run syncsvc under py-spy into DIR")
    ap.add_argument("--parse-in-worker", default="always", choices=("event_all", "always", "never"))
    ap.add_argument(
        "--memory-limit",
        type=float,
        metavar="MB",
        help="run syncsvc's tree under this memory.max, as a container limit would",
    )
    args = ap.parse_args()
    global MEMORY_LIMIT_MB
    MEMORY_LIMIT_MB = args.memory_limit
    ap_parse = args.parse_in_worker
    global PROFILE, PARSE_IN_WORKER
    PROFILE, PARSE_IN_WORKER = args.profile, ap_parse
    names = args.scenario or ["small", "incr-1m", "many-events"]
    if args.scenario is None:
        print("scenarios: small, incr-1m (includes full-1m), many-events")
    rows: list[Row] = []
    print(f"machine: {machine()}; SYNCSVC_PARSE_IN_WORKER={PARSE_IN_WORKER}", flush=True)
    with server_url(args.database_url) as url:
        for name in names:
            rows += await run_scenario(
                SCENARIOS[name], url, with_floor=not args.no_floor, with_peers=not args.no_peers
            )
    print(fmt_table(rows))
    print(f"after: {machine()}")
    print(
        "fetch+parse, stage and diff+apply are sums over units (units overlap in time); "
        "vs floor = floor seconds / syncsvc seconds (>1: syncsvc is faster than the floor)."
    )
    bad = [r for r in rows if r.status != "succeeded"]
    wrong = [r for r in rows if r.expected_changes is not None and r.changes != r.expected_changes]
    for r in bad:
        print(f"FAILED: {r.scenario}: {r.status} {r.note}")
    for r in wrong:
        print(f"WRONG: {r.scenario}: {r.changes} changes, ground truth {r.expected_changes}")
    return 1 if bad or wrong else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
