"""The typer app: every command builds Settings once, configures logging, and passes them down."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import typer

from syncsvc import logs
from syncsvc.cliutil import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    Config,
    api_settings_of,
    chosen_accounts,
    fail,
    run_async,
    settings_of,
)
from syncsvc.errors import ConfigError, RunLockedError, SyncError
from syncsvc.export.cli import dbt_sources_cmd, export_app
from syncsvc.feed import cli as feed_cli
from syncsvc.settings import Settings
from syncsvc.vocab import ExitCode

app = typer.Typer(
    name="syncsvc",
    help="Bulk data sync from the Cvent Conference API into PostgreSQL, with an exact change log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: typer's rich help labels flags `<bool>`, which they do not take.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(
    help="The database: migrations, where it is, the embedded server.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(feed_cli.changes_app, name="changes")  # the change feed (docs/change-feed.md)
app.add_typer(feed_cli.consumers_app, name="consumers")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"syncsvc {version('syncsvc')}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="A TOML settings file (anywhere on the command line).",
            exists=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    ctx.obj = Config(config)


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Create or migrate the schema (the embedded PostgreSQL when SYNCSVC_DATABASE_URL is unset)."""
    from syncsvc.store import db

    settings = settings_of(ctx)

    from syncsvc.store import jobs

    async def go() -> tuple[tuple[str | None, str | None], bool]:
        async with db.connect(settings) as engine:
            await db.upgrade(engine, revision)
            # The task queue's tables when its extra is installed (a no-op once they exist).
            queue = await jobs.apply_queue_schema(engine) if revision == "head" else False
            return await db.current_revision(engine), queue

    (current, _), queue = run_async(go)
    _say_where(settings)
    typer.echo(f"schema at revision {current}")
    if queue:
        typer.echo("task queue schema created (procrastinate)")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1.")]
) -> None:
    """Migrate the schema down to a revision (`base` drops everything)."""
    from syncsvc.store import db

    settings = settings_of(ctx)

    async def go() -> tuple[str | None, str | None]:
        async with db.connect(settings) as engine:
            await db.downgrade(engine, revision)
            return await db.current_revision(engine)

    current, _ = run_async(go)
    typer.echo(f"schema at revision {current or 'base (empty)'}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database's schema revision and the code's; exit 1 if they differ."""
    from syncsvc.store import db

    settings = settings_of(ctx)

    async def go() -> tuple[str | None, str | None]:
        async with db.connect(settings) as engine:
            return await db.current_revision(engine)

    current, head = run_async(go)
    _say_where(settings)
    typer.echo(f"database revision: {current or 'none (run `syncsvc db upgrade`)'}")
    typer.echo(f"code head revision: {head}")
    if current != head:
        raise typer.Exit(EXIT_FAILED)


@db_app.command("url")
def db_url(ctx: typer.Context) -> None:
    """Print the database URL (for psql); starts the embedded server if that is the one in use."""
    from syncsvc.store import db

    settings = settings_of(ctx)
    try:
        url = db.resolve_url(settings, keep_running=True)
    except SyncError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    typer.echo(db.libpq_url(url))


@db_app.command("stop")
def db_stop(ctx: typer.Context) -> None:
    """Stop the embedded PostgreSQL under SYNCSVC_DATA_DIR (other commands stop the one they
    started when they exit; `db url` leaves it running for psql)."""
    from syncsvc.store import db

    settings = settings_of(ctx)
    if settings.database_url:
        raise fail("SYNCSVC_DATABASE_URL is set: there is no embedded server to stop", EXIT_CONFIG)
    pgdata = settings.data_dir / "pgdata"
    try:
        stopped = db.stop_embedded(pgdata)
    except SyncError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    typer.echo(f"{'stopped' if stopped else 'not running'}: embedded PostgreSQL in {pgdata}")


def _say_where(settings: Settings) -> None:
    if settings.database_url:
        from syncsvc.store import db

        url = db.sqlalchemy_url(settings.database_url).set(drivername="postgresql")
        typer.echo(f"database: {db.redacted(url)}")
    else:
        typer.echo(f"database: embedded PostgreSQL, data in {settings.data_dir / 'pgdata'}")


def _tune_malloc() -> None:
    """glibc: a fixed mmap threshold and two arenas. A run moves megabyte-sized buffers (dump
    segments, COPY batches) through several threads; with the default sliding threshold and an
    arena per thread, freed buffers stay in the heap and the peak RSS creeps up (measured: 5 MB
    of a ~100 MB process)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    m_arena_max, m_mmap_threshold = -8, -3
    mallopt(m_arena_max, 2)
    mallopt(m_mmap_threshold, 1024 * 1024)


def _hoist_config(argv: list[str]) -> list[str]:
    """`--config FILE` moved to the front, so it works after the subcommand too (as in dbt)."""
    rest: list[str] = []
    config: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in ("--config", "-c") and i + 1 < len(argv):
            config = [arg, argv[i + 1]]
            i += 2
            continue
        if arg.startswith("--config="):
            config = [arg]
        else:
            rest.append(arg)
        i += 1
    return config + rest


def _redacted_excepthook(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    """The last line of defence for a traceback that escapes every handler (a bug): printed
    with the secrets redacted, as a log line would be (a chained library error may quote what
    a server echoed)."""
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(logs.redact(text))


def main(argv: list[str] | None = None) -> Any:
    _tune_malloc()
    sys.excepthook = _redacted_excepthook
    args = _hoist_config(list(argv if argv is not None else sys.argv[1:]))
    try:
        code = app(args=args, prog_name="syncsvc", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors: one line, not a usage block
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            sys.exit(EXIT_OK)
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} -h`)" if context is not None else ""
        typer.echo(f"syncsvc: {exc.format_message()}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_CONFIG))
    except typer.Abort:
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    last: Annotated[int, typer.Option("--last", min=1, help="How many runs.")] = 5,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="Only this account's runs (repeatable; default: all)."),
    ] = None,
) -> None:
    """The last runs and their units, failed and held units first, with why."""
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from syncsvc import status
    from syncsvc.feed.consumers import list_consumers
    from syncsvc.store import db

    if fmt not in ("table", "json"):
        raise fail("--format must be one of table, json", EXIT_CONFIG)
    settings = settings_of(ctx)

    async def go() -> tuple[list[status.RunStatus], list[Any]]:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            names = tuple(account or ())
            return await status.last_runs(engine, last, names), await list_consumers(engine)

    runs, feed_consumers = run_async(go)
    if fmt == "json":
        typer.echo(json.dumps([r.as_json() for r in runs], indent=2))
        return
    # Piped output (a log, a ticket) gets full-width rows rather than folding at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if feed_consumers:  # the change feed's consumers and their lag
        console.print("[bold]consumers[/bold]")
        console.print(feed_cli.consumers_table(feed_consumers))
    if not runs:
        console.print("no runs yet: `syncsvc run` starts one")
        return
    for r in runs:
        took = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        console.print(
            f"[bold]run {r.run_id}[/bold] {r.status} ({r.account}, {r.environment}, {r.trigger}) "
            f"started {r.started_at:%Y-%m-%d %H:%M:%S}Z"
            + (f", {took:.1f}s" if took is not None else "")
            + f": {r.records} records, +{r.inserted} ~{r.updated} -{r.deleted} rekey {r.rekeyed}",
            highlight=False,
        )
        if r.error_message:
            console.print(f"  {r.error_message}", markup=False, highlight=False)
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in (
            "id",
            "resource",
            "scope",
            "status",
            "tries",
            "records",
            "MB",
            "ins",
            "upd",
            "del",
            "rekey",
            "why",
        ):
            table.add_column(col, no_wrap=col != "why", overflow="fold")
        for u in r.units:
            table.add_row(
                str(u.fetch_id),
                f"{u.resource}",
                u.scope,
                u.status,
                str(u.attempts),
                str(u.records),
                f"{u.bytes / 1e6:.1f}",
                str(u.inserted),
                str(u.updated),
                str(u.deleted),
                str(u.rekeyed),
                Text(u.reason),
            )
        console.print(table)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a run in progress instead of exiting 5.")
    ] = False,
    override_hold: Annotated[
        bool,
        typer.Option("--override-hold", help="Apply units held for mass deletes (after checking)."),
    ] = False,
    account: Annotated[
        list[str] | None,
        typer.Option(
            "--account",
            help="Run only this account (repeatable; default: every configured account).",
        ),
    ] = None,
) -> None:
    """One run now, of each account. Exit: 0 succeeded, 1 failed, 2 config, 3 partial, 4 held,
    5 locked (several accounts: the worst of theirs)."""
    from syncsvc import console, scheduler

    settings = api_settings_of(ctx)
    accounts = chosen_accounts(settings, account)
    out = console.console()
    if out.is_terminal and "log_level" not in (ctx.find_root().obj.sources or {}):
        # The live display shows what info lines would say; warnings and errors still print
        # (through it). An explicit SYNCSVC_LOG_LEVEL is kept.
        logs.configure("warning", settings.log_format)
    if len(accounts) == 1 and not settings.declared:
        # The single-account deployment: exactly the one run it always was.
        try:
            result = run_async(lambda: _run_account(accounts[0], out, wait, override_hold))
        except typer.Exit as exc:
            if exc.exit_code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                _close_interrupted(settings)
            raise
        console.print_summary(out, result)
        raise typer.Exit(result.exit_code)
    if settings.executor == "queue":
        # The units run on the workers: every account's run is planned at once and waited for
        # together, so the workers have every account's units to take (one account after the
        # other would leave them idle while each run's last units finish).
        try:
            outcomes = run_async(lambda: _run_accounts_queued(accounts, wait, override_hold))
        except typer.Exit as exc:
            if exc.exit_code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                _close_interrupted(settings)
            raise
        qcodes: list[int] = []
        for acct, got in zip(accounts, outcomes, strict=True):
            label = f"account {acct.account}: "
            if isinstance(got, BaseException):
                code = EXIT_LOCKED if isinstance(got, RunLockedError) else EXIT_FAILED
                if isinstance(got, ConfigError):
                    code = EXIT_CONFIG
                out.print(f"{label}{got}", highlight=False, markup=False)
                qcodes.append(code)
            else:
                console.print_summary(out, got, label=label)
                qcodes.append(got.exit_code)
        names = ", ".join(f"{a.account} {c}" for a, c in zip(accounts, qcodes, strict=True))
        out.print(f"exit codes: {names}", highlight=False)
        raise typer.Exit(scheduler.worst_exit(qcodes))
    # Several accounts: one run each, one after the other (each its own run row, lock and API
    # client); one account's failure, refusal or lock never stops the next.
    codes: list[int] = []
    for acct in accounts:
        out.print(f"[bold]account {acct.account}[/bold]", highlight=False)
        try:
            result = run_async(
                lambda acct=acct: _run_account(acct, out, wait, override_hold),  # type: ignore[misc]
                prefix=f"account {acct.account}: ",
            )
        except typer.Exit as exc:
            if exc.exit_code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                _close_interrupted(settings)
                raise
            codes.append(int(exc.exit_code))
            continue
        console.print_summary(out, result, label=f"account {acct.account}: ")
        codes.append(result.exit_code)
    names = ", ".join(f"{a.account} {c}" for a, c in zip(accounts, codes, strict=True))
    out.print(f"exit codes: {names}", highlight=False)
    raise typer.Exit(scheduler.worst_exit(codes))


async def _run_accounts_queued(
    accounts: Sequence[Settings], wait: bool, override_hold: bool
) -> list[Any]:
    """Every account's run at once (executor = queue): each result, or the error that ended it
    (one account's failure never stops another's run)."""
    from syncsvc import scheduler
    from syncsvc.store import db
    from syncsvc.store.runlock import LockSession

    async with (
        # One engine: every run's lock on one connection, and their units' short transactions
        # (event.do, the plan, the polling) taking turns on a few more (docs/task-queue.md).
        db.connect(accounts[0], pool_size=min(len(accounts), 8) + 2, max_overflow=2) as engine,
        scheduler.cancel_on_sigterm(),
    ):
        await db.require_current(engine)
        locks = LockSession(engine)
        try:
            got = await asyncio.gather(
                *(
                    scheduler.run_once(
                        a, engine, override_hold=override_hold, wait_lock=wait, lock_session=locks
                    )
                    for a in accounts
                ),
                return_exceptions=True,
            )
        finally:
            await locks.close()
    for g in got:
        if isinstance(g, BaseException) and not isinstance(g, SyncError):
            raise g
    return list(got)


async def _run_account(settings: Settings, out: Any, wait: bool, override_hold: bool) -> Any:
    """One run of one account (its settings), with the terminal's live display."""
    from syncsvc import console, lockinfo, scheduler, status
    from syncsvc.store import db

    async with db.connect(settings) as engine, scheduler.cancel_on_sigterm():
        await db.require_current(engine)
        expected = await status.previous_bytes(engine, settings.account) if out.is_terminal else {}
        with console.RunProgress(out, expected) as progress:
            holder = await lockinfo.holder(engine, settings.account) if wait else None
            if holder is not None:
                progress.waiting(f"waiting for {holder.describe()} to finish")
                log = logs.get_logger(__name__)
                log.info("run_waiting", run_id=holder.run_id, holder=holder.describe())
            try:
                return await scheduler.run_once(
                    settings,
                    engine,
                    override_hold=override_hold,
                    wait_lock=wait,
                    on_unit=progress.unit_done,
                    on_plan=progress.planned,
                    on_fetch=progress.fetch_progress,
                )
            except RunLockedError as exc:
                holder = await lockinfo.holder(engine, settings.account)
                if holder is None:
                    raise
                raise RunLockedError(
                    f"{holder.describe()} holds this database; wait for it or pass --wait"
                ) from exc


def _close_interrupted(settings: Settings) -> None:
    """After an interruption, make sure the run says so: the run records `interrupted` itself,
    unless a second signal cut that write short; then this process closes what it left."""
    import os
    import socket

    from syncsvc.store import db
    from syncsvc.store import runs as run_rows

    async def go() -> int:
        async with db.connect(settings) as engine:
            return await run_rows.close_interrupted(
                engine, socket.gethostname(), os.getpid(), message="interrupted"
            )

    with contextlib.suppress(Exception, KeyboardInterrupt, typer.Exit):
        run_async(go)


@app.command("worker")
def worker_cmd(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, help="Units run at once (SYNCSVC_WORKER_CONCURRENCY)."
        ),
    ] = None,
) -> None:
    """Run queued units (executor = queue) until SIGTERM; any number of workers may run."""
    from syncsvc import worker

    settings = api_settings_of(ctx)
    run_async(lambda: worker.serve_worker(settings, concurrency=concurrency))


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(min=1, help="Events in the simulated account.")] = 6,
    users_per_event: Annotated[int, typer.Option(min=1, help="Mean users per event.")] = 400,
    seed: Annotated[int, typer.Option(min=0, help="The simulator's seed.")] = 7,
) -> None:
    """Sync two days of a simulated account into the embedded PostgreSQL and show the changes."""
    from syncsvc import console, demo
    from syncsvc.simulator import SimConfig

    settings = settings_of(ctx)
    if settings.log_level == "info":  # the demo speaks through its own output
        logs.configure("warning", settings.log_format)
    out = console.console()
    config = SimConfig(seed=seed, events=events, users_per_event=users_per_event)
    raise typer.Exit(run_async(lambda: demo.run_demo(settings, out, config)))


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    run_now: Annotated[bool, typer.Option("--run-now", help="Run once at start-up too.")] = False,
) -> None:
    """Run on SYNCSVC_SCHEDULE; serve /healthz, /metrics and the status pages until SIGTERM."""
    from aiohttp import web

    from syncsvc import scheduler, serve
    from syncsvc import web as status_pages
    from syncsvc.feed.webhook import Deliveries
    from syncsvc.metrics import Metrics
    from syncsvc.store import db

    settings = api_settings_of(ctx)

    async def go() -> int:
        # Accounts due at once each hold a connection for their run lock while their units
        # take turns on the rest.
        accounts = len(settings.accounts())
        async with db.connect(settings, pool_size=accounts + 4, max_overflow=10) as engine:
            await db.require_current(engine)
            metrics = Metrics()

            async def one_run(stop: asyncio.Event) -> scheduler.RunResult:
                return await scheduler.run_once(
                    settings, engine, metrics=metrics, stop=stop, trigger="serve"
                )

            def account_run(acct: Settings) -> Any:
                async def go(stop: asyncio.Event) -> scheduler.RunResult:
                    return await scheduler.run_once(
                        acct, engine, metrics=metrics, stop=stop, trigger="serve"
                    )

                return go

            # [[account]] tables: one schedule loop per account (each its own cron).
            account_runs = {a.account: account_run(a) for a in settings.declared} or None

            def pages(app: web.Application, health: serve.Health) -> None:
                status_pages.register(app, engine, settings, health.check)

            deliveries = Deliveries(settings, engine, metrics.registry)  # webhook consumers
            return await serve.serve(
                settings,
                one_run,
                metrics,
                run_now=run_now,
                engine=engine,
                pages=pages,
                background=[deliveries.run],
                health_detail=deliveries.health_detail,
                account_runs=account_runs,
            )

    raise typer.Exit(run_async(go))


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8080,
    events: Annotated[int, typer.Option(min=1, help="Events alive on day 0.")] = 8,
    users_per_event: Annotated[int, typer.Option(min=0, help="Mean users per event.")] = 200,
    sessions_per_event: Annotated[int, typer.Option(min=0, help="Mean sessions per event.")] = 20,
    exhibitors_per_event: Annotated[
        int, typer.Option(min=0, help="Mean exhibitors per event.")
    ] = 8,
    seed: Annotated[int, typer.Option(min=0, help="The account's seed: same seed, same data.")] = 1,
    day: Annotated[
        int, typer.Option(min=0, help="The day served (change it via the control API).")
    ] = 0,
    update_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Daily share of records updated.")
    ] = 0.05,
    delete_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Daily share of records deleted.")
    ] = 0.01,
    insert_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Daily share of records inserted.")
    ] = 0.02,
    recreate_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Daily share re-created.")
    ] = 0.005,
    new_event_every: Annotated[
        int, typer.Option(min=0, help="A new event appears every N days (0: never).")
    ] = 7,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Render each dump once into this directory, then sendfile.")
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(help='A fault as JSON, e.g. {"kind": "latency", "value": 1}.'),
    ] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help='JSON, e.g. {"starts_per_second": 10, "max_concurrent": 4}.')
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option(help="Allow-listed networks (default 127.0.0.0/8, ::1).")
    ] = None,
) -> None:
    """Serve the Conference API simulator (a stand-in for Cvent with known ground truth)."""
    import json

    from syncsvc.simulator.data import SimConfig
    from syncsvc.simulator.server import build_options, serve_forever

    config = SimConfig(
        seed=seed,
        day=day,
        events=events,
        users_per_event=users_per_event,
        sessions_per_event=sessions_per_event,
        exhibitors_per_event=exhibitors_per_event,
        update_rate=update_rate,
        delete_rate=delete_rate,
        insert_rate=insert_rate,
        recreate_rate=recreate_rate,
        new_event_every=new_event_every,
    )
    options: dict[str, Any] = {"cache_dir": cache_dir}
    try:
        if fault:
            options["faults"] = [json.loads(f) for f in fault]
        if rate_limit:
            options["rate_limit"] = json.loads(rate_limit)
    except ValueError as exc:
        raise fail(f"bad JSON option: {exc}", EXIT_CONFIG) from None
    if allow:
        options["allow_list"] = allow
    try:
        build_options(**options)  # refuse a bad fault or network here, with one line
    except (ValueError, TypeError, KeyError) as exc:
        raise fail(f"bad simulator option: {exc}", EXIT_CONFIG) from None

    def announce(line: str) -> None:
        typer.echo(line)

    try:
        run_async(lambda: serve_forever(config, host, port, announce=announce, **options))
    except OSError as exc:  # the port is taken, the address is not ours
        raise fail(f"cannot listen on {host}:{port}: {exc}", EXIT_FAILED) from None


@app.command("check")
def check_cmd(ctx: typer.Context) -> None:
    """Check the settings, the database and the API (one event.do call); exit 0 if all pass."""
    from syncsvc import check

    cfg: Config = ctx.find_root().obj
    lines, ok = run_async(lambda: check.run_checks(cfg.file))
    for line in lines:
        typer.echo(line)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="Only this account (repeatable; default: every one)."),
    ] = None,
) -> None:
    """The units a run would execute now (from the events the last run stored), fetching nothing."""
    from syncsvc import planview
    from syncsvc.store import db

    settings = settings_of(ctx)
    accounts = chosen_accounts(settings, account)

    async def go() -> list[str]:
        lines: list[str] = []
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            for acct in accounts:
                if settings.declared:
                    lines.append(f"account {acct.account}:")
                lines += await planview.describe(acct, engine)
        return lines

    for line in run_async(go):
        typer.echo(line)


app.add_typer(export_app, name="export")
app.command("dbt-sources")(dbt_sources_cmd)
