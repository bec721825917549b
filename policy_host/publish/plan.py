"""The plan of an `apply` run: pure, from the tenants, the state and the time.

For every tenant with a valid file whose bytes are not what was last
published, a new id (``Change``: new or change); for every tenant whose
file is gone, a withdrawal (RFC 8461 section 8: served ``mode: none`` under
a new id until the longest max_age it ever published has run out), then a
deletion. A pending change an interrupted run left is taken up with its id
when its bytes are still wanted; any other gets a fresh one.
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from policy_host.model import Policy, Tenant
from policy_host.publish.update import id_record_value
from policy_host.read.tenants import LoadResult
from policy_host.render import fingerprint, render
from policy_host.state import (
    ACTIVE,
    CHANGE,
    DELETE,
    GONE,
    NEW,
    UNPUBLISHED,
    WITHDRAW,
    WITHDRAWING,
    Pending,
    Record,
    new_policy_id,
)


@dataclass(frozen=True)
class Change:
    """One tenant's change: serve ``new_body``, publish ``new_id``.

    ``delete`` has neither: its TXT is deleted, then it is no longer served.
    """

    domain: str
    kind: str
    old_id: str | None
    new_id: str | None
    old_body: bytes | None
    new_body: bytes | None
    max_age: int
    # Takes up a pending change an interrupted run left (same id).
    resumed: bool = False

    @property
    def txt(self) -> bytes | None:
        return id_record_value(self.new_id) if self.new_id else None

    def pending(self, now: float) -> Pending:
        # A deletion keeps serving the withdrawal policy until committed.
        body = self.new_body if self.new_body is not None else self.old_body or b""
        return Pending(self.kind, self.new_id, fingerprint(body), body, self.max_age, since=now)

    def diff(self) -> list[str]:
        def lines(body: bytes | None) -> list[str]:
            return body.decode("ascii").splitlines() if body else []

        return list(
            difflib.unified_diff(
                lines(self.old_body),
                lines(self.new_body),
                f"{self.domain} id {self.old_id or '-'} (served now)",
                f"{self.domain} id {self.new_id or '-'} (after apply)",
                lineterm="",
            )
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "action": self.kind,
            "old_id": self.old_id,
            "new_id": self.new_id,
            "resumed": self.resumed,
            "policy": self.new_body.decode("ascii") if self.new_body else None,
            "diff": self.diff(),
        }


@dataclass(frozen=True)
class Withdrawal:
    """A removed tenant served ``mode: none`` until ``ends``."""

    domain: str
    policy_id: str | None
    ends: float

    def as_dict(self) -> dict[str, object]:
        return {"domain": self.domain, "policy_id": self.policy_id, "ends": iso(self.ends)}


@dataclass(frozen=True)
class Plan:
    now: float
    changes: tuple[Change, ...] = ()
    withdrawing: tuple[Withdrawal, ...] = ()
    notes: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def serves(self) -> tuple[Change, ...]:
        """Changes whose new bytes must be served before their id goes out."""
        return tuple(c for c in self.changes if c.kind != DELETE)

    @property
    def deletes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == DELETE)


def iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def withdrawal_policy(max_age: int) -> Policy:
    """What a removed tenant serves: RFC 8461 section 8, "mode: none"."""
    return Policy(mode="none", mx=(), max_age=max_age)


def _policy_fields(body: bytes) -> tuple[str, list[str], int]:
    """(mode, mx patterns, max_age) of a body ``render`` made."""
    mode, mx, max_age = "", [], 0
    for line in body.decode("ascii").splitlines():
        key, _, value = line.partition(": ")
        if key == "mode":
            mode = value
        elif key == "mx":
            mx.append(value)
        elif key == "max_age":
            max_age = int(value)
    return mode, mx, max_age


def _mx_note(domain: str, old_body: bytes, new: Policy, now: float) -> str | None:
    """RFC 8461 section 8: senders may keep the old policy for its max_age,
    so MX hosts dropped from it must keep working that long."""
    mode, old_mx, max_age = _policy_fields(old_body)
    dropped = [pattern for pattern in old_mx if pattern not in new.mx]
    if mode == "none" or not dropped:
        return None
    return (
        f"{domain}: mx no longer lists {', '.join(dropped)}; senders that cached the previous "
        f"policy may keep using it for up to its max_age of {max_age} s "
        f"(until {iso(now + max_age)}): "
        "keep those MX hosts accepting mail with valid TLS until then "
        f"(see 'policy-host show {domain}')"
    )


IdMaker = Callable[[float, str, str, Sequence[str]], str]


def make_plan(
    result: LoadResult,
    records: Mapping[str, Record],
    now: float,
    *,
    withdrawal_max_age: int,
    make_id: IdMaker = new_policy_id,
) -> Plan:
    """What a run must do, from the valid tenants, the state and the time."""
    planner = _Planner(now, withdrawal_max_age, make_id)
    for domain in sorted(set(result.tenants) | set(records)):
        tenant = result.tenants.get(domain)
        if tenant is not None:
            planner.present(tenant, records.get(domain), result.bodies.get(domain))
        elif domain not in result.broken:  # (validation stops a run with broken files)
            planner.removed(records[domain])
    return planner.plan()


@dataclass
class _Planner:
    now: float
    withdrawal_max_age: int
    make_id: IdMaker
    changes: list[Change] = field(default_factory=list)
    withdrawing: list[Withdrawal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def plan(self) -> Plan:
        return Plan(
            self.now,
            tuple(self.changes),
            tuple(self.withdrawing),
            tuple(self.notes),
            tuple(self.unchanged),
        )

    def fresh_id(self, domain: str, body: bytes, record: Record | None) -> str:
        taken: list[str] = []
        if record is not None:
            pending_id = record.pending.policy_id if record.pending else None
            taken = [i for i in (record.policy_id, pending_id) if i]
        return self.make_id(self.now, domain, fingerprint(body), taken)

    def change(
        self,
        record: Record | None,
        domain: str,
        kind: str,
        new_id: str | None,
        body: bytes | None,
        max_age: int,
        resumed: bool = False,
    ) -> None:
        old_id, old_body = (record.policy_id, record.body) if record else (None, None)
        self.changes.append(
            Change(domain, kind, old_id, new_id, old_body, body, max_age, resumed=resumed)
        )

    def present(self, tenant: Tenant, record: Record | None, body: bytes | None = None) -> None:
        """A tenant with a (valid) file: publish its policy if it is new.
        (``body`` is ``render(tenant.policy)`` when the caller has it.)"""
        domain = tenant.domain
        body = body if body is not None else render(tenant.policy)
        pending = record.pending if record else None
        if pending is not None and pending.kind in (NEW, CHANGE) and pending.body == body:
            # Taken up where an interrupted run left it, with its id.
            max_age = tenant.policy.max_age
            self.change(record, domain, pending.kind, pending.policy_id, body, max_age, True)
        elif pending is None and record and record.status == ACTIVE and record.body == body:
            self.unchanged.append(domain)
            return
        else:
            # Also when the bytes equal the committed ones but another change
            # was pending: its id may be in DNS already, so the bytes wanted
            # now need an id of their own.
            kind = NEW if record is None or record.status in (UNPUBLISHED, GONE) else CHANGE
            policy_id = self.fresh_id(domain, body, record)
            self.change(record, domain, kind, policy_id, body, tenant.policy.max_age)
        if record is not None and record.status == ACTIVE and record.body is not None:
            note = _mx_note(domain, record.body, tenant.policy, self.now)
            if note:
                self.notes.append(note)

    def removed(self, record: Record) -> None:
        """A tenant whose file is gone: withdraw it, then delete it."""
        domain, pending, max_age = record.domain, record.pending, self.withdrawal_max_age
        body = render(withdrawal_policy(max_age))
        if pending is not None and pending.kind == DELETE:
            self.change(record, domain, DELETE, None, None, record.max_age or 0, resumed=True)
        elif pending is not None and pending.kind == WITHDRAW and pending.body == body:
            self.change(record, domain, WITHDRAW, pending.policy_id, body, max_age, resumed=True)
            ends = _ends(record, pending, self.now)
            self.withdrawing.append(Withdrawal(domain, pending.policy_id, ends))
        elif pending is None and record.status in (GONE, UNPUBLISHED):
            return
        elif pending is None and record.status == WITHDRAWING and record.body == body:
            deadline = record.withdrawal_ends()
            assert deadline is not None
            if self.now >= deadline:
                # RFC 8461 section 8: every earlier max_age has run out.
                self.change(record, domain, DELETE, None, None, record.max_age or 0)
            else:
                self.withdrawing.append(Withdrawal(domain, record.policy_id, deadline))
                self.unchanged.append(domain)
        else:
            # Just removed (or the withdrawal policy changed): serve
            # `mode: none` under a new id.
            policy_id = self.fresh_id(domain, body, record)
            self.change(record, domain, WITHDRAW, policy_id, body, max_age)
            self.withdrawing.append(Withdrawal(domain, policy_id, _ends(record, pending, self.now)))


def _ends(record: Record, pending: Pending | None, now: float) -> float:
    """When a withdrawal starting now (or already running) will end."""
    longest = record.longest_max_age
    if pending is not None and pending.kind in (NEW, CHANGE):
        longest = max(longest, pending.max_age)
    started = record.withdrawal_started if record.status == WITHDRAWING else None
    return (started or now) + longest
