"""syncsvc: async bulk data sync from the Cvent Conference API into PostgreSQL."""

from __future__ import annotations

__version__ = "0.1.0"
