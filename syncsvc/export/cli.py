"""The `syncsvc export ...` commands and `syncsvc dbt-sources` (registered in syncsvc/cli.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from syncsvc.cliutil import EXIT_CONFIG, fail, run_async, settings_of
from syncsvc.export.parquet import Limits

export_app = typer.Typer(
    help="Parquet files for warehouses: the change log by cursor, the current state.",
    no_args_is_help=True,
)


def _limits(max_file_rows: int, max_file_mb: float, batch_mb: float) -> Limits:

    if max_file_rows < 1 or max_file_mb <= 0 or batch_mb <= 0:
        raise fail("--max-file-rows, --max-file-mb and --batch-mb must be positive", EXIT_CONFIG)
    return Limits(
        max_rows=max_file_rows,
        max_bytes=int(max_file_mb * 1024 * 1024),
        batch_bytes=max(64 * 1024, int(batch_mb * 1024 * 1024)),
    )


MaxRows = Annotated[int, typer.Option("--max-file-rows", help="Rows per part file at most.")]
MaxMb = Annotated[
    float, typer.Option("--max-file-mb", help="Start a new part file past this size (MiB).")
]
BatchMb = Annotated[
    float, typer.Option("--batch-mb", help="About this much (MiB) fetched per row group.")
]
To = Annotated[
    str, typer.Option("--to", help="A directory, or an object store URL such as s3://bucket/path.")
]


@export_app.command("changes")
def export_changes_cmd(
    ctx: typer.Context,
    to: To,
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="Export from this consumer's cursor and advance it."),
    ] = None,
    since: Annotated[
        int | None, typer.Option("--since", help="Export changes with seq > SINCE.")
    ] = None,
    until: Annotated[
        int | None, typer.Option("--until", help="...and seq <= UNTIL (default: the last).")
    ] = None,
    max_file_rows: MaxRows = 1_000_000,
    max_file_mb: MaxMb = 256.0,
    batch_mb: BatchMb = 4.0,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="Only this account's changes (repeatable; with --since)."),
    ] = None,
) -> None:
    """Write the change log as Parquet parts and a manifest (written last) into a new directory
    named after the seq range; with --consumer, advance its cursor once the manifest exists."""
    from syncsvc.export import changes
    from syncsvc.export.dest import Destination
    from syncsvc.store import db

    if (consumer is None) == (since is None):
        raise fail("give exactly one of --consumer NAME or --since SEQ", EXIT_CONFIG)
    if since is not None and since < 0:
        raise fail("--since must be >= 0", EXIT_CONFIG)
    if account and consumer is not None:
        raise fail(
            "--account cannot be combined with --consumer: the consumer's own filters apply",
            EXIT_CONFIG,
        )
    limits = _limits(max_file_rows, max_file_mb, batch_mb)
    settings = settings_of(ctx)

    async def go() -> changes.ExportResult:
        dest = Destination.open(to)
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await changes.export_changes(
                engine,
                dest,
                since=since,
                until=until,
                consumer=consumer,
                limits=limits,
                filters={"account": list(account)} if account else None,
            )

    result = run_async(go)
    typer.echo(
        json.dumps(
            {
                "directory": result.directory,
                "after_seq": result.after_seq,
                "through_seq": result.through_seq,
                "rows": result.rows,
                "files": result.files,
            }
        )
    )


@export_app.command("snapshot")
def export_snapshot_cmd(
    ctx: typer.Context,
    to: To,
    entity: Annotated[
        list[str] | None,
        typer.Option("--entity", help="event, user, session, exhibitor (repeat; default all)."),
    ] = None,
    max_file_rows: MaxRows = 1_000_000,
    max_file_mb: MaxMb = 256.0,
    batch_mb: BatchMb = 4.0,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="Only this account's rows (repeatable; default all)."),
    ] = None,
) -> None:
    """Write the live current state as typed Parquet, all entities from one repeatable-read
    snapshot; each manifest records the change-log seq the state is consistent with."""
    from syncsvc.export import snapshot
    from syncsvc.export.dest import Destination
    from syncsvc.store import db
    from syncsvc.store.schema import ENTITIES

    chosen = list(dict.fromkeys(entity or ENTITIES))
    bad = [e for e in chosen if e not in ENTITIES]
    if bad:
        raise fail(f"--entity {bad[0]!r} is not one of {', '.join(ENTITIES)}", EXIT_CONFIG)
    limits = _limits(max_file_rows, max_file_mb, batch_mb)
    settings = settings_of(ctx)

    async def go() -> list[snapshot.SnapshotResult]:
        dest = Destination.open(to)
        async with db.connect(settings) as engine:
            await db.require_current(engine)
            return await snapshot.export_snapshot(
                engine, dest, chosen, limits, accounts=tuple(account or ())
            )

    for r in run_async(go):
        typer.echo(
            json.dumps(
                {
                    "entity": r.entity,
                    "directory": r.directory,
                    "consistent_with_seq": r.consistent_with_seq,
                    "rows": r.rows,
                }
            )
        )


def dbt_sources_cmd(
    schema: Annotated[
        str, typer.Option("--schema", help="The schema syncsvc's tables are in.")
    ] = "public",
    database: Annotated[
        str | None, typer.Option("--database", help="The database (dbt's `database:`).")
    ] = None,
    warn_hours: Annotated[
        int, typer.Option("--warn-after-hours", help="Freshness warning after this many hours.")
    ] = 26,
    error_hours: Annotated[
        int, typer.Option("--error-after-hours", help="Freshness error after this many hours.")
    ] = 50,
) -> None:
    """Print a dbt sources.yml for syncsvc's tables and history views (with freshness)."""
    from syncsvc.export import dbt

    if warn_hours < 1 or error_hours < warn_hours:
        raise fail("need 1 <= --warn-after-hours <= --error-after-hours", EXIT_CONFIG)
    doc = dbt.sources(schema, database, dbt.Freshness(warn_hours, error_hours))
    typer.echo(dbt.render(doc), nl=False)
