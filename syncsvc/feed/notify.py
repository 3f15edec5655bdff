"""The notification a unit sends in its commit transaction: the new high seq, never data.

PostgreSQL delivers a NOTIFY only when (and if) its transaction commits, so a listener is woken
exactly when new change rows become visible, and a rolled-back unit wakes nobody.
"""

from __future__ import annotations

CHANNEL = "syncsvc_changes"
# $1: the unit's last seq, as text. pg_notify takes a bound channel name and payload; NOTIFY
# itself takes neither.
SQL = "SELECT pg_notify('syncsvc_changes', $1)"
