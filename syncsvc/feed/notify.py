"""The notification a unit sends in its commit transaction: the new high seq, never data.

PostgreSQL delivers a NOTIFY only when (and if) its transaction commits, so a listener is woken
exactly when new change rows become visible, and a rolled-back unit wakes nobody. The store sends
it (with the change rows, `store.queries.insert_changes`); the feed listens on its channel.
"""

from __future__ import annotations

from syncsvc.store.queries import CHANGES_CHANNEL

CHANNEL = CHANGES_CHANNEL
