"""Policy -> the exact bytes senders fetch, and their fingerprint."""

from __future__ import annotations

import hashlib

from policy_host.model import Policy

CRLF = "\r\n"


def render(policy: Policy) -> bytes:
    """RFC 8461 section 3.2 policy text in one canonical form.

    ``version`` first, then ``mode``, one ``mx`` line per pattern in the order
    written, then ``max_age``; lower-case keys, ``key: value``, CRLF after
    every line, ASCII only, no BOM, no blank or trailing space. Some senders
    reject anything looser, and the same policy must always give the same
    bytes (the id only changes when these bytes do).
    """
    lines = ["version: STSv1", f"mode: {policy.mode}"]
    lines.extend(f"mx: {pattern}" for pattern in policy.mx)
    lines.append(f"max_age: {policy.max_age}")
    return (CRLF.join(lines) + CRLF).encode("ascii")


def fingerprint(body: bytes) -> str:
    """A stable digest of served bytes; a policy changed iff this changed."""
    return hashlib.sha256(body).hexdigest()
