"""The certificates and keys the serving nodes get, copied where `apply`
can read them.

certbot keeps them root's (``/etc/letsencrypt``, 0700), and `apply`, which
pushes, runs as the service user. So `certs` (root) copies certbot's
``live`` (relative links) and ``archive`` into
``<state_dir>/nodes/certificates/``, owned by the owner of ``state_dir``,
folders 0700 and files 0600, with rsync (only what changed; what certbot
deleted goes too). The service user already holds the TSIG key, which
can rewrite every customer's id: these keys widen its reach only to the
TLS names it serves anyway.
"""

from __future__ import annotations

from pathlib import Path

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig
from policy_host.runner import Runner, run

FOLDERS = ("live", "archive")
COPY_TIMEOUT = 300.0


def copy_dir(config: ProviderConfig) -> Path:
    return config.state_dir / "nodes" / "certificates"


def copy_argv(config: ProviderConfig) -> list[str] | None:
    """The rsync that refreshes the copy; None while certbot has made nothing."""
    sources = [
        f"{config.acme.config_dir}/./{name}/"
        for name in FOLDERS
        if (config.acme.config_dir / name).is_dir()
    ]
    if not sources:
        return None
    owner = config.state_dir.stat()
    return [
        "rsync",
        "--recursive",
        "--links",
        "--times",
        "--relative",
        "--delete",
        f"--chown={owner.st_uid}:{owner.st_gid}",
        "--chmod=D0700,F0600",
        *sources,
        f"{copy_dir(config)}/",
    ]


def copy_certificates(config: ProviderConfig, *, runner: Runner = run) -> None:
    """Refresh the copy (only with serving nodes configured)."""
    if not config.nodes.serving:
        return
    argv = copy_argv(config)
    if argv is None:
        return
    target = copy_dir(config)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = runner(argv, timeout=COPY_TIMEOUT)
    if not done.ok:
        raise PolicyHostError(
            f"copying the certificates for the serving nodes to {target} failed: "
            f"{done.last_lines()}"
        )
