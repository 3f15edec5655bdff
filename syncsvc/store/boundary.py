"""The store's one error boundary: database and OS errors become `StoreError` here, in one line.

Every store operation runs its database calls inside `boundary(what)` (or a function under
`@guarded(what)`): asyncpg, SQLAlchemy and OS errors leave it as `StoreError("what: Kind: first
line")`, so a caller, the scheduler or a command, meets one error type and a user one line,
never a driver's traceback. Errors already ours (a `SyncError`) pass unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

import asyncpg
import sqlalchemy as sa

from syncsvc.errors import StoreError

# What a database call can raise: the server's errors, the driver's (a dead connection), the
# SQLAlchemy pool's and engine's, and the socket's.
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sa.exc.SQLAlchemyError,
    OSError,
)

P = ParamSpec("P")
R = TypeVar("R")


def one_line(exc: BaseException) -> str:
    """`Kind: the first line of its message`, at most 500 characters."""
    reason = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper: the driver's own error
    text = str(reason).splitlines()[0] if str(reason) else ""
    return f"{type(reason).__name__}: {text}"[:500]


@contextlib.contextmanager
def boundary(
    what: str,
    *,
    errors: tuple[type[BaseException], ...] = DB_ERRORS,
    resource: str | None = None,
) -> Iterator[None]:
    """Raise `errors` met inside as StoreError(f"{what}: Kind: first line")."""
    try:
        yield
    except errors as exc:
        raise StoreError(f"{what}: {one_line(exc)}", resource=resource) from exc


def guarded(what: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """An async function whose body runs inside `boundary(what)`."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def guarded_fn(*args: P.args, **kwargs: P.kwargs) -> R:
            with boundary(what):
                return await fn(*args, **kwargs)

        return guarded_fn

    return wrap
