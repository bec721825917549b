"""What `apply` has done: per tenant the policy and id in DNS, in SQLite.

One row per tenant domain holds two things:

- the *committed* policy: the bytes, fingerprint and id that were served,
  verified, published to the primary DNS server and confirmed there, with
  the times of each step;
- at most one *pending* change: a new id and bytes that a run has started
  to serve and publish but not yet committed.

A run changes the store in short transactions: ``begin`` records the pending
changes (before the server is told to reload), ``mark`` notes the steps done,
``commit`` moves pending into committed (after the primary confirmed the new
TXT). A crash at any point leaves either the old committed state or the new
one, plus a pending change that the next run takes up again; because every
step (reload, verify, UPDATE, confirm) can be repeated safely, the rerun
converges. While a change is pending its id may already be in DNS, so a
tenant without a file is served its pending bytes (see ``fallback_policies``).

Readers that are not `apply` (the snapshot compiler in the gunicorn master,
`check`, `zone`) open the database read-only and never create it (``read``);
`apply` writes through ``store.Store``. The state sits in the core: it takes
paths, and knows nothing of the provider config or the steps above it.
"""

from __future__ import annotations

from policy_host.sqlitedb import BUSY_TIMEOUT
from policy_host.state.read import (
    fallback_policies,
    history,
    hosted_tlsrpt,
    published_ids,
    read_records,
    served_versions,
)
from policy_host.state.rows import (
    ACTIVE,
    CHANGE,
    DELETE,
    GONE,
    HISTORY_KEEP,
    KINDS,
    NEW,
    PUBLISHED,
    RECORDED,
    SCHEMA_VERSION,
    SERVED,
    STATUSES,
    STEPS,
    UNPUBLISHED,
    WITHDRAW,
    WITHDRAWING,
    HistoryEntry,
    Pending,
    Record,
    ServedVersion,
    StateError,
    new_policy_id,
)
from policy_host.state.store import (
    Store,
)

__all__ = [
    "ACTIVE",
    "BUSY_TIMEOUT",
    "CHANGE",
    "DELETE",
    "GONE",
    "HISTORY_KEEP",
    "KINDS",
    "NEW",
    "PUBLISHED",
    "RECORDED",
    "SCHEMA_VERSION",
    "SERVED",
    "STATUSES",
    "STEPS",
    "UNPUBLISHED",
    "WITHDRAW",
    "WITHDRAWING",
    "HistoryEntry",
    "Pending",
    "Record",
    "ServedVersion",
    "StateError",
    "Store",
    "fallback_policies",
    "history",
    "hosted_tlsrpt",
    "new_policy_id",
    "published_ids",
    "read_records",
    "served_versions",
]
