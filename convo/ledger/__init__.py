"""The usage ledger: one append-only row per API attempt, SQLite by default.

:class:`Ledger` is the entry point; :class:`LedgerRow` the record; :class:`Totals`,
:class:`BustCount` and :class:`TaskCost` what the queries return. See ``docs/ledger.md``.
"""

from convo.ledger.core import Ledger
from convo.ledger.queries import BustCount, Filters, GroupBy, TaskCost, TaskGroup, Totals
from convo.ledger.record import CacheOutcome, LedgerRow, Outcome, Purpose, Status, cache_outcome
from convo.ledger.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "BustCount",
    "CacheOutcome",
    "Filters",
    "GroupBy",
    "Ledger",
    "LedgerRow",
    "Outcome",
    "Purpose",
    "Status",
    "TaskCost",
    "TaskGroup",
    "Totals",
    "cache_outcome",
]
