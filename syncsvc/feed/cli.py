"""The `changes` and `consumers` commands (registered in syncsvc/cli.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from syncsvc import cliutil

changes_app = typer.Typer(
    help="The change log: stream it from a cursor or for a named consumer, follow it, prune it."
)
consumers_app = typer.Typer(
    help="Named consumers of the change log (pull or webhook).", no_args_is_help=True
)


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise cliutil.fail(
            f"{option} {value!r} is not an ISO 8601 date or time", cliutil.EXIT_CONFIG
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check(name: str, values: list[str] | None, allowed: tuple[str, ...]) -> None:
    bad = [v for v in values or () if v not in allowed]
    if bad:
        raise cliutil.fail(f"{name} {bad[0]!r} is not one of {', '.join(allowed)}", 2)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


@changes_app.callback(invoke_without_command=True)
def changes_cmd(
    ctx: typer.Context,
    since: Annotated[
        int, typer.Option("--since", min=0, help="Only changes with seq > SINCE.")
    ] = 0,
    until: Annotated[
        int | None, typer.Option("--until", min=0, help="Only changes with seq <= UNTIL.")
    ] = None,
    entity: Annotated[
        list[str] | None, typer.Option("--entity", help="event, user, session, exhibitor.")
    ] = None,
    op: Annotated[
        list[str] | None, typer.Option("--op", help="insert, update, delete, rekey.")
    ] = None,
    event: Annotated[list[str] | None, typer.Option("--event", help="An event GUID.")] = None,
    run: Annotated[list[int] | None, typer.Option("--run", min=1, help="A run id.")] = None,
    client_id: Annotated[list[str] | None, typer.Option("--client-id", help="A clientID.")] = None,
    environment: Annotated[
        list[str] | None, typer.Option("--environment", help="uat or production.")
    ] = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", help="An account's name.")
    ] = None,
    captured_after: Annotated[
        str | None, typer.Option("--captured-after", help="captured_at >= this (ISO 8601, UTC).")
    ] = None,
    captured_before: Annotated[
        str | None, typer.Option("--captured-before", help="captured_at < this (ISO 8601, UTC).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="ndjson or csv.")] = "ndjson",
    envelope: Annotated[
        str, typer.Option("--envelope", help="syncsvc, or debezium (ndjson only).")
    ] = "syncsvc",
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="Read from this consumer's cursor and advance it."),
    ] = None,
    ack_only: Annotated[
        int | None,
        typer.Option("--ack-only", help="With --consumer: acknowledge up to SEQ, emit nothing."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming as units commit.")
    ] = False,
) -> None:
    """Stream the change log in seq order from a cursor, as NDJSON or CSV on stdout."""
    if ctx.invoked_subcommand is not None:
        return
    from syncsvc import changefeed
    from syncsvc.feed import consumers
    from syncsvc.feed import follow as feed_follow
    from syncsvc.settings import ENVIRONMENTS
    from syncsvc.store import db
    from syncsvc.store.schema import ENTITIES, OPS

    if fmt not in changefeed.FORMATS:
        raise cliutil.fail(f"--format must be one of {', '.join(changefeed.FORMATS)}", 2)
    if envelope not in changefeed.ENVELOPES:
        raise cliutil.fail(f"--envelope must be one of {', '.join(changefeed.ENVELOPES)}", 2)
    if envelope == "debezium" and fmt != "ndjson":
        raise cliutil.fail("--envelope debezium is NDJSON only", 2)
    _check("--entity", entity, ENTITIES)
    _check("--op", op, OPS)
    _check("--environment", environment, ENVIRONMENTS)
    if limit is not None and limit <= 0:
        raise cliutil.fail("--limit must be positive", 2)
    filters_given = [
        name
        for name, value in (
            ("--since", since or None),
            ("--entity", entity),
            ("--op", op),
            ("--event", event),
            ("--run", run),
            ("--client-id", client_id),
            ("--environment", environment),
            ("--account", account),
            ("--captured-after", captured_after),
            ("--captured-before", captured_before),
        )
        if value
    ]
    if consumer is not None and filters_given:
        raise cliutil.fail(
            f"{filters_given[0]} cannot be combined with --consumer: the consumer's own cursor"
            " and filters apply (`syncsvc consumers show NAME`)",
            2,
        )
    if ack_only is not None and consumer is None:
        raise cliutil.fail("--ack-only needs --consumer", 2)
    flt = changefeed.ChangeFilter(
        since=since,
        until=until,
        entity=entity or (),
        op=op or (),
        event=event or (),
        run=run or (),
        client_id=client_id or (),
        environment=environment or (),
        account=account or (),
        captured_after=_when(captured_after, "--captured-after"),
        captured_before=_when(captured_before, "--captured-before"),
        limit=limit,
    )
    settings = cliutil.settings_of(ctx)

    async def go() -> None:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            if ack_only is not None:
                assert consumer is not None
                old, new = await consumers.ack_only(engine, consumer, ack_only)
                typer.echo(f"consumer {consumer}: cursor {old} -> {new}", err=True)
                return
            stop = asyncio.Event()
            _stop_on_signals(stop)
            out = changefeed.Output(sys.stdout, fmt, envelope)
            await feed_follow.pull(
                engine,
                out,
                flt=flt,
                consumer=consumer,
                follow=follow,
                poll=settings.feed_poll_interval,
                stop=stop,
            )

    try:
        cliutil.run_async(go)
    except BrokenPipeError:  # `syncsvc changes | head` is a normal way to peek
        sys.stderr.close()


@changes_app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    older_than: Annotated[
        float, typer.Option("--older-than", help="Days: rows captured before now - DAYS may go.")
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Also past consumers that have not acknowledged them."),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only.")] = False,
) -> None:
    """Delete change rows older than DAYS that every consumer has acknowledged."""
    from syncsvc.feed import prune
    from syncsvc.store import db

    if older_than < 0:
        raise cliutil.fail("--older-than must not be negative", 2)
    settings = cliutil.settings_of(ctx)

    async def go() -> prune.PruneResult:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await prune.prune(engine, older_than, force=force, dry_run=dry_run)

    r = cliutil.run_async(go)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {r.deleted} change rows captured before {r.cutoff:%Y-%m-%d %H:%M:%S}Z")
    for name, cursor in r.broken:
        typer.echo(
            f"consumer {name} (cursor {cursor}) {'will miss' if dry_run else 'missed'} rows:"
            f" they were deleted before it acknowledged them",
            err=True,
        )
    if r.kept_old:
        holders = ", ".join(f"{n} (cursor {c})" for n, c in r.holding) or "the newest row"
        typer.echo(
            f"kept {r.kept_old} older rows not yet acknowledged by: {holders}"
            " (--force deletes them anyway)",
            err=True,
        )


# --- consumers -----------------------------------------------------------------------------------


def _start(value: str) -> str | int:
    return value if value in ("beginning", "now") else int(value) if value.isdigit() else value


@consumers_app.command("add")
def consumers_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The consumer's name (a-z, 0-9, -, _).")],
    start: Annotated[
        str, typer.Option("--from", help="beginning, now, or a seq: where its cursor starts.")
    ] = "beginning",
    entity: Annotated[list[str] | None, typer.Option("--entity")] = None,
    op: Annotated[list[str] | None, typer.Option("--op")] = None,
    event: Annotated[list[str] | None, typer.Option("--event")] = None,
    environment: Annotated[list[str] | None, typer.Option("--environment")] = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", help="Only this account's changes.")
    ] = None,
    client_id: Annotated[list[str] | None, typer.Option("--client-id")] = None,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="Deliver to this URL from `serve`.")
    ] = None,
    secret_file: Annotated[
        str | None,
        typer.Option("--secret-file", help="File holding the signing secret (whsec_...)."),
    ] = None,
    envelope: Annotated[str, typer.Option("--envelope", help="syncsvc or debezium.")] = "syncsvc",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Changes per webhook request.")
    ] = None,
) -> None:
    """Add a consumer (a pull consumer, or with --webhook one that `serve` delivers)."""
    from syncsvc.feed import consumers
    from syncsvc.store import db

    settings = cliutil.settings_of(ctx)
    filters = {
        "entity": entity or [],
        "op": op or [],
        "event": event or [],
        "environment": environment or [],
        "account": account or [],
        "client_id": client_id or [],
    }

    secret_path = str(Path(secret_file).resolve()) if secret_file else None

    async def go() -> consumers.ConsumerLag:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await consumers.add_consumer(
                engine,
                name,
                start=_start(start),
                filters=filters,
                webhook_url=webhook,
                secret_file=secret_path,
                envelope=envelope,
                batch_size=batch_size,
            )

    c = cliutil.run_async(go)
    typer.echo(f"consumer {c.name} added at cursor {c.cursor} ({c.lag_rows} changes behind)")


def _lag_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@consumers_app.command("list")
def consumers_list(ctx: typer.Context) -> None:
    """Every consumer: cursor, lag (rows, and the age of the oldest change not acknowledged)."""
    from rich.console import Console

    from syncsvc.feed import consumers
    from syncsvc.store import db

    settings = cliutil.settings_of(ctx)

    async def go() -> list[consumers.ConsumerLag]:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await consumers.list_consumers(engine)

    rows = cliutil.run_async(go)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if not rows:
        console.print("no consumers: `syncsvc consumers add NAME` adds one")
        return
    console.print(consumers_table(rows))


def consumers_table(rows: list[Any]) -> Any:
    """A rich table of consumers with lag (also printed by `syncsvc status`)."""
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("consumer", "kind", "status", "cursor", "lag", "waiting", "last error"):
        table.add_column(col, no_wrap=col != "last error", overflow="fold")
    for c in rows:
        table.add_row(
            c.name,
            "webhook" if c.webhook_url else "pull",
            c.status,
            str(c.cursor),
            str(c.lag_rows),
            _lag_text(c.lag_seconds),
            c.last_error or "",
        )
    return table


@consumers_app.command("show")
def consumers_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The consumer.")]
) -> None:
    """One consumer as JSON (the secret file's path, never the secret)."""
    import dataclasses

    from syncsvc.feed import consumers
    from syncsvc.store import db

    settings = cliutil.settings_of(ctx)

    async def go() -> consumers.ConsumerLag:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await consumers.get_consumer(engine, name)

    c = cliutil.run_async(go)
    typer.echo(
        json.dumps(
            {
                k: (v.isoformat() if isinstance(v, datetime) else v)
                for k, v in dataclasses.asdict(c).items()
            },
            indent=2,
        )
    )


@consumers_app.command("reset")
def consumers_reset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The consumer.")],
    to: Annotated[str, typer.Option("--to", help="beginning, now, or a seq.")],
) -> None:
    """Move a consumer's cursor (back to replay, forward to skip)."""
    from syncsvc.feed import consumers
    from syncsvc.store import db

    settings = cliutil.settings_of(ctx)

    async def go() -> tuple[int, int]:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await consumers.reset_consumer(engine, name, _start(to))

    old, new = cliutil.run_async(go)
    typer.echo(f"consumer {name}: cursor {old} -> {new}")


def _simple(ctx: typer.Context, name: str, action: str) -> None:
    from syncsvc.feed import consumers
    from syncsvc.store import db

    settings = cliutil.settings_of(ctx)

    async def go() -> None:
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            if action == "remove":
                await consumers.remove_consumer(engine, name)
            else:
                await consumers.set_paused(engine, name, action == "pause")

    cliutil.run_async(go)
    typer.echo(f"consumer {name}: {action}d" if action != "pause" else f"consumer {name}: paused")


@consumers_app.command("remove")
def consumers_remove(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The consumer.")]
) -> None:
    """Remove a consumer (prune no longer waits for it)."""
    _simple(ctx, name, "remove")


@consumers_app.command("pause")
def consumers_pause(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The consumer.")]
) -> None:
    """Stop delivering to a webhook consumer; it keeps its place."""
    _simple(ctx, name, "pause")


@consumers_app.command("resume")
def consumers_resume(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The consumer.")]
) -> None:
    """Deliver to a paused consumer again, from its cursor."""
    _simple(ctx, name, "resume")
