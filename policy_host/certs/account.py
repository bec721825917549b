"""Our ACME account, as certbot keeps it: a CAA ``accounturi`` (RFC 8657
section 3) allows only the account it names, so `check` and `certs` must
know ours.

certbot stores each account under
``<config_dir>/accounts/<host[:port]><path of the directory URL>/<id>/regr.json``
with the account URL in its ``uri`` field.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from pathlib import Path

from policy_host.read.acme import AcmeSettings

log = logging.getLogger(__name__)


def accounts_dir(acme: AcmeSettings) -> Path:
    """certbot's folder of accounts for ``acme.directory``."""
    url = urllib.parse.urlparse(acme.directory)
    return acme.config_dir / "accounts" / (url.netloc + url.path).strip("/")


def account_uris(acme: AcmeSettings) -> frozenset[str]:
    """Every account URI certbot registered with ``acme.directory``; empty
    before the first order, or when the files cannot be read (then an
    ``accounturi`` restriction is judged as not ours)."""
    uris = set()
    try:
        regrs = sorted(accounts_dir(acme).glob("*/regr.json"))
    except OSError:
        return frozenset()
    for path in regrs:
        try:
            uri = json.loads(path.read_text()).get("uri")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: cannot read the ACME account: %s", path, exc)
            continue
        if isinstance(uri, str) and uri:
            uris.add(uri)
    return frozenset(uris)
