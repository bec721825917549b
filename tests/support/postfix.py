"""A real Postfix (Debian) for the report tests, configured as
docs/reports.md tells a provider: the ``rua`` mailbox is routed by a
transport map to a ``pipe`` service in master.cf that runs ``policy-host
reports ingest -`` as the service user.

Everything lives under a folder of the test's own (config, queue, log),
nothing under /etc/postfix is read or written; the master process must be
started inside the test's network namespace (it listens on 127.0.0.1 and
spawns the pipe there, so the pipe's DKIM key look-ups reach the test's
DNS server). Mail comes in by SMTP on ``port`` or through Postfix's own
``sendmail`` (``sendmail_argv``), which drops it into the queue for the
``pickup`` service.

The pipe cannot run as root (Postfix refuses), so the tests stand
``nobody`` in for the service user: it owns ``state_dir`` (``reports``
runs only as that owner, policy_host/cli/owner.py) and ``pipe_command``
finds a way for it to run this tree's ``policy-host``.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from policy_host.read.config import ProviderConfig, load_config

from .fixtures_dns import in_ci
from .layout import ROOT
from .netns import netns_supported
from .procs import (
    LOOPBACK,
    Daemon,
    DaemonError,
    Managed,
    MissingBinaryError,
    port_open,
    require_binary,
)
from .reportenv import report_tree
from .stack import CLI

__all__ = [
    "PIPE_USER",
    "RUA_ADDRESS",
    "Postfix",
    "as_pipe_user",
    "dkim_key",
    "pipe_command",
    "postfix_missing",
    "require_postfix",
    "service_tree",
    "txt_rdata",
]

PIPE_USER = "nobody"
RUA_ADDRESS = "tlsrpt@provider.example"
TIMEOUT = 60

# main.cf as docs/reports.md has it: the provider's domain is local, the
# transport map sends the rua mailbox to the pipe, and the same map lists
# it as a local recipient (smtpd refuses other addresses, "User unknown").
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.provider.example
mydomain = provider.example
mydestination = provider.example
inet_interfaces = {loopback}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
transport_maps = hash:{root}/conf/transport
local_recipient_maps = hash:{root}/conf/transport
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = no
biff = no
"""
TRANSPORT = f"{RUA_ADDRESS} tlsrpt:\n"
# The last service is the one docs/reports.md shows, with the test's user
# and a wrapper that passes --config (the pipe's argv has no environment).
SERVICES = """\
{loopback}:{port} inet n - n - - smtpd
pickup unix n - n 1 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
tlsrpt unix - n n - 4 pipe
  flags=Rq user={user} argv={deliver}
"""


def postfix_missing() -> str | None:
    """Why Postfix cannot run here (None: it can). Callers skip on it, or
    fail under CI=true."""
    why = netns_supported()
    if why is not None:
        return why
    try:
        for name in ("postfix", "postconf", "postmap", "sendmail", "knotd", "openssl", "setpriv"):
            require_binary(name)
    except MissingBinaryError as exc:
        return str(exc)
    return None


def require_postfix() -> None:
    """Skip the test when Postfix cannot run here; under CI=true, fail it."""
    why = postfix_missing()
    if why is None:
        return
    if in_ci():
        pytest.fail(f"{why}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(why)


def service_tree(root: Path, *, unverified: str, dns_port: int) -> ProviderConfig:
    """The report tree under ``root`` (a folder all may enter), its DKIM
    key look-ups sent to the test's DNS server on ``dns_port``, and a
    ``state_dir`` owned by the pipe user, who stands for the service user
    of docs/install.md: the server and the pipe both write the report
    store there."""
    root.chmod(0o755)
    config = report_tree(root, unverified=unverified)
    config.tenants_dir.parent.chmod(0o755)
    with config.path.open("a") as handle:
        handle.write(f"dns:\n  resolver: {LOOPBACK}:{dns_port}\n")
    config = load_config(config.path)
    config.state_dir.mkdir(mode=0o755)
    shutil.chown(config.state_dir, PIPE_USER)
    return config


def dkim_key(folder: Path, name: str) -> tuple[Path, str]:
    """A new RSA key: its PEM file and the base64 public key for ``p=``."""
    private = folder / f"{name}.pem"
    openssl = require_binary("openssl")
    subprocess.run([openssl, "genrsa", "-out", str(private), "2048"], check=True,
                   capture_output=True, timeout=TIMEOUT)  # fmt: skip
    der = subprocess.run(
        [openssl, "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    ).stdout
    return private, base64.b64encode(der).decode()


def txt_rdata(value: str) -> str:
    """A TXT rdata of strings of at most 255 bytes (RFC 1035 section 3.3)."""
    return " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))


def pipe_command() -> list[str]:
    """``policy-host`` as the pipe user can run it: the installed script,
    or, where its interpreter lives in a folder only root may enter (a
    Python built under /root), the system's Python 3 with this tree and the
    environment's packages on its path (docs/install.md, "The code")."""
    python_path = ":".join(
        p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT),
                    sysconfig.get_paths()["purelib"]) if p
    )  # fmt: skip
    env = ["/usr/bin/env", f"PYTHONPATH={python_path}"]
    system = [*env, "/usr/bin/python3", "-m", "policy_host.cli.main"]
    for argv in ([*env, *CLI], system):
        probe = subprocess.run([*as_pipe_user(), *argv, "--version"],
                               capture_output=True, timeout=TIMEOUT, check=False)  # fmt: skip
        if probe.returncode == 0:
            return argv
    raise DaemonError(f"{PIPE_USER} cannot run policy-host: {probe.stderr!r}")


def as_pipe_user() -> list[str]:
    """A prefix that runs a command as the pipe user, in the same process
    (setpriv execs: the PID a Daemon stops is the command's own)."""
    gid = pwd.getpwnam(PIPE_USER).pw_gid
    return [require_binary("setpriv"), f"--reuid={PIPE_USER}", f"--regid={gid}",
            "--init-groups", "--"]  # fmt: skip


class Postfix(Managed):
    """Postfix's master in the foreground, with its config under ``root``;
    ``deliver`` is the pipe's command line (run as ``PIPE_USER``)."""

    def __init__(self, root: Path, deliver: list[str], *, port: int) -> None:
        self.root = root
        self.conf = root / "conf"
        self.maillog = root / "maillog"
        self.port = port
        self.deliver = deliver
        self._daemon: Daemon | None = None

    def sendmail_argv(self) -> list[str]:
        """Postfix's sendmail for this instance, as tlsrpt-reporter calls it
        (``-i -t``: recipients from the headers, a lone dot is no end)."""
        return [require_binary("sendmail"), "-C", str(self.conf), "-i", "-t"]

    def _install(self) -> None:
        for folder in (self.conf, self.root / "data", self.root / "queue"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", "postfix")
        # The pipe's argv has no shell: a script keeps the command whole.
        script = self.root / "deliver"
        script.write_text("#!/bin/sh\nexec " + " ".join(self.deliver) + "\n")
        script.chmod(0o755)
        (self.conf / "main.cf").write_text(MAIN_CF.format(root=self.root, loopback=LOOPBACK))
        (self.conf / "master.cf").write_text(
            SERVICES.format(loopback=LOOPBACK, port=self.port, user=PIPE_USER, deliver=script)
        )
        (self.conf / "transport").write_text(TRANSPORT)
        self._run("postmap", "-c", str(self.conf), f"hash:{self.conf / 'transport'}")
        # `postfix check` makes the queue folders with their owners and modes.
        self._run("postfix", "-c", str(self.conf), "check")

    def _run(self, *argv: str) -> str:
        done = subprocess.run([require_binary(argv[0]), *argv[1:]], capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)  # fmt: skip
        if done.returncode != 0:
            raise DaemonError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self._install()
        daemon_dir = self._run("postconf", "-c", str(self.conf), "-h", "daemon_directory").strip()
        self._daemon = Daemon(
            [f"{daemon_dir}/master", "-c", str(self.conf), "-d"],
            name="postfix-master",
            workdir=self.root / "run",
            ready=lambda: port_open(LOOPBACK, self.port),
            ready_timeout=30,
        )
        self._daemon.start()

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self._daemon is not None:
            self._daemon.cleanup()
