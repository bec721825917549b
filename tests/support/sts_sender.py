"""A real sender's view: postfix-mta-sts-resolver's STSResolver, unchanged.

Run as a program (``python sts_sender.py DOMAIN[=KNOWN_ID] ...``); prints
one JSON object per domain: ``{"domain", "result", "id", "policy"}``. It
uses the system resolver configuration (/etc/resolv.conf, through c-ares
for the TXT and glibc for the HTTPS host) and the default certificate store
(SSL_CERT_FILE), exactly as the daemon would; the test runs it with its own
resolv.conf and pebble's root (see ``netns.private_resolv_conf``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def resolve_all(args: list[str]) -> list[dict[str, Any]]:
    from postfix_mta_sts_resolver.resolver import (  # type: ignore[import-untyped,unused-ignore]
        STSResolver,
    )

    resolver = STSResolver(loop=asyncio.get_running_loop(), timeout=5)
    results = []
    for arg in args:
        domain, _, known = arg.partition("=")
        status, found = await resolver.resolve(domain, known or None)
        policy_id, policy = found if found is not None else (None, None)
        results.append({"domain": domain, "result": status.name, "id": policy_id, "policy": policy})
    return results


def main() -> int:
    for line in asyncio.run(resolve_all(sys.argv[1:])):
        print(json.dumps(line, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
