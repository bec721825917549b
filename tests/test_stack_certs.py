"""`policy-host certs` and the shipped nginx config against the real parts.

One miniature internet per module (see ``support.stack``): knot + unbound
on port 53, pebble validating through nginx's port 80, gunicorn behind
nginx on 443, all inside a network namespace the test makes. Needs root and
Debian's knot, unbound, pebble, certbot, nginx, iproute2 and openssl: a
missing one skips the module, except under CI=true where it fails.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures_dns import in_ci
from support.netns import netns_supported
from support.procs import wait_until
from support.stack import Customer, MiniInternet

from policy_host.certs.account import account_uris
from policy_host.model import Policy
from policy_host.read.config import load_config
from policy_host.render import render

ALPHA = Customer("alpha.example", mx=("mx1.alpha.example",), mx_hosts=("mx1.alpha.example",))
BETA = Customer(
    "beta.example", mode="testing", mx=("*.beta.example",), mx_hosts=("mx.beta.example",)
)
# A tenant whose customer has not added the CNAMEs yet.
NOCNAME = Customer("nocname.example", mx=("mx.nocname.example",), cnames=False)
# A customer whose CAA allows another CA only.
CAA = Customer(
    "caa.example",
    mx=("mx.caa.example",),
    extra_records=('@ CAA 0 issue "other-ca.example"',),
)
CUSTOMERS = (ALPHA, BETA, NOCNAME, CAA)


def require_stack() -> None:
    problems = []
    why = netns_supported()
    if why:
        problems.append(why)
    missing = MiniInternet.missing_binaries()
    if missing:
        problems.append(f"missing programs: {', '.join(missing)}")
    if not problems:
        return
    message = "; ".join(problems)
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniInternet]:
    require_stack()
    with MiniInternet(tmp_path_factory.mktemp("stack"), CUSTOMERS) as net:
        yield net


@pytest.fixture(scope="module")
def certified(world: MiniInternet) -> tuple[MiniInternet, Path, str]:
    """The world after one `policy-host certs` run; pebble's root CA."""
    done = world.policy_host("certs")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert world.pebble is not None
    root = world.pebble.issuing_root()
    # `nginx -s reload` returns before the new workers answer, and for a
    # moment old workers (without the new names) still accept too: wait
    # until several handshakes in a row find every name.
    wait_until(
        lambda: not any(
            handshake_refused(world, f"mta-sts.{c.domain}", root)
            for _ in range(5)
            for c in (ALPHA, BETA)
        ),
        10,
        what="nginx to reload",
    )
    return world, root, output


def policy_bytes(customer: Customer) -> bytes:
    return render(Policy(customer.mode, customer.mx, customer.max_age))


def handshake_refused(world: MiniInternet, name: str, cafile: Path) -> bool:
    try:
        world.https(name, cafile=cafile)
    except ssl.SSLError:
        return True
    return False


def test_certs_obtains_a_certificate_per_name_through_port_80(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, root, output = certified
    assert "mta-sts.alpha.example: ordered:" in output
    assert "mta-sts.beta.example: ordered:" in output
    live = world.letsencrypt / "config" / "live"
    assert (live / "mta-sts.alpha.example" / "fullchain.pem").is_file()
    assert (live / "mta-sts.beta.example" / "privkey.pem").is_file()
    for customer in (ALPHA, BETA):
        answer = world.https(f"mta-sts.{customer.domain}", cafile=root)
        assert answer.status == 200
        assert answer.headers["content-type"].split(";")[0] == "text/plain"
        assert answer.body == policy_bytes(customer)


def test_certs_never_orders_without_the_cname_or_against_caa(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, root, output = certified
    assert "mta-sts.nocname.example: skipped: mta-sts.nocname.example does not exist" in output
    assert "mta-sts.caa.example: skipped: CAA at caa.example allows only other-ca.example" in output
    live = world.letsencrypt / "config" / "live"
    assert not (live / "mta-sts.nocname.example").exists()
    assert not (live / "mta-sts.caa.example").exists()
    # Hosted but without a certificate: refused at the handshake too.
    assert handshake_refused(world, "mta-sts.nocname.example", root)


def test_our_acme_account_is_read_where_certbot_keeps_it(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    """The account a CAA accounturi (RFC 8657) must name: certbot's, as
    registered with pebble by the first order."""
    world, _, _ = certified
    config = load_config(world.config_path)
    (uri,) = account_uris(config.acme)
    server = config.acme.directory.rsplit("/", 1)[0]
    assert uri.startswith(server + "/"), (uri, server)


@pytest.mark.parametrize(
    "name",
    ["mta-sts.unknown.example", "MTA-STS.ALPHA.EXAMPLE.evil", "x" * 60 + ".example", "localhost"],
)
def test_an_sni_name_we_do_not_host_is_refused_at_the_handshake(
    certified: tuple[MiniInternet, Path, str], name: str
) -> None:
    world, root, _ = certified
    assert handshake_refused(world, name, root)


def test_sni_names_are_matched_case_insensitively(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, root, _ = certified
    answer = world.https("MTA-STS.Alpha.Example", cafile=root)
    assert answer.body == policy_bytes(ALPHA)


def test_tls_below_1_2_is_refused(certified: tuple[MiniInternet, Path, str]) -> None:
    world, root, _ = certified
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version"):
            world.https("mta-sts.alpha.example", cafile=root, tls_version=old)
    answer = world.https("mta-sts.alpha.example", cafile=root, tls_version=ssl.TLSVersion.TLSv1_2)
    assert answer.status == 200


def test_the_apps_answers_pass_through_untouched_and_nothing_redirects(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, root, _ = certified
    host = "mta-sts.alpha.example"
    gz = world.https(host, cafile=root, headers={"Accept-Encoding": "gzip"})
    assert gz.body == policy_bytes(ALPHA)
    assert "content-encoding" not in gz.headers
    assert gz.headers["content-length"] == str(len(policy_bytes(ALPHA)))
    for path in ("/", "/.well-known/mta-sts.txt/", "/.well-known/", "/index.html"):
        answer = world.https(host, path, cafile=root)
        assert answer.status == 404, path
        assert answer.body == b"not found\n"
        assert "location" not in answer.headers
    # The Host header, not the SNI name, picks the policy (gunicorn sees
    # `Host $host`); an unknown Host gets the app's 404.
    other = world.https(host, cafile=root, host_header="mta-sts.beta.example")
    assert other.body == policy_bytes(BETA)
    unknown = world.https(host, cafile=root, host_header="mta-sts.unknown.example")
    assert unknown.status == 404
    posted = world.https(host, cafile=root, method="POST")
    assert posted.status == 405
    assert posted.headers["allow"] == "GET, HEAD"


def test_port_80_serves_acme_challenges_for_any_host_and_redirects_the_rest(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, _, _ = certified
    challenge = world.webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "token-123").write_text("token-123.thumbprint")
    for host in ("mta-sts.alpha.example", "anything.example"):
        answer = world.http(host, "/.well-known/acme-challenge/token-123")
        assert answer.status == 200
        assert answer.body == b"token-123.thumbprint"
    assert world.http("x.example", "/.well-known/acme-challenge/missing").status == 404
    moved = world.http("mta-sts.alpha.example", "/.well-known/mta-sts.txt")
    assert moved.status == 301
    assert moved.headers["location"] == "https://mta-sts.alpha.example/.well-known/mta-sts.txt"


def test_access_log_names_the_host(certified: tuple[MiniInternet, Path, str]) -> None:
    world, root, _ = certified
    world.https("mta-sts.alpha.example", cafile=root)
    log = world.nginx.access_log
    wait_until(lambda: 'host="mta-sts.alpha.example"' in log.read_text(), 5, what="access log")


def test_a_second_run_keeps_valid_certificates_and_orders_nothing(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, _, _ = certified
    conf = world.nginx.tenants_conf.read_bytes()
    done = world.policy_host("certs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mta-sts.alpha.example: valid: until" in done.stdout
    assert "mta-sts.beta.example: valid: until" in done.stdout
    assert "ordered" not in done.stdout
    assert ": unchanged:" in done.stdout
    assert world.nginx.tenants_conf.read_bytes() == conf


def test_dry_run_prints_the_certbot_command_and_changes_nothing(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, _, _ = certified
    done = world.policy_host("certs", "--dry-run", "--ignore-backoff")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mta-sts.alpha.example: valid" in done.stdout
    assert "would-order" not in done.stdout  # the others have no CNAME or a CAA


def test_a_broken_generated_config_is_never_left_for_nginx(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, root, _ = certified
    key = world.letsencrypt / "config" / "live" / "mta-sts.beta.example" / "privkey.pem"
    saved = key.read_bytes()
    conf = world.nginx.tenants_conf.read_bytes()
    world.nginx.tenants_conf.write_text("# stale\n")  # forces a rewrite
    key.write_text("not a key\n")
    try:
        done = world.policy_host("nginx-conf")
        assert done.returncode == 3
        assert "nginx config test failed" in done.stderr
        # The previous file is back, and nginx still serves.
        assert world.nginx.tenants_conf.read_text() == "# stale\n"
    finally:
        key.write_bytes(saved)
        world.nginx.tenants_conf.write_bytes(conf)
    assert world.https("mta-sts.alpha.example", cafile=root).status == 200


def test_removed_tenants_certificates_are_deleted_with_a_flag(
    certified: tuple[MiniInternet, Path, str],
) -> None:
    world, root, _ = certified
    (world.tenants_dir / "beta.example.yaml").unlink()
    assert world.policy_host("reload").returncode == 0
    wait_until(
        lambda: world.https(
            "mta-sts.alpha.example", cafile=root, host_header="mta-sts.beta.example"
        ).status
        == 404,
        10,
        what="the server to drop beta.example",
    )
    kept = world.policy_host("certs")
    assert "mta-sts.beta.example: kept: no longer hosted" in kept.stdout, kept.stdout
    wait_until(lambda: handshake_refused(world, "mta-sts.beta.example", root), 10, what="reload")
    live = world.letsencrypt / "config" / "live" / "mta-sts.beta.example"
    assert live.exists()
    done = world.policy_host("certs", "--delete-removed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mta-sts.beta.example: removed:" in done.stdout
    assert not live.exists()
    assert world.https("mta-sts.alpha.example", cafile=root).status == 200


def test_stack_processes_run_inside_the_namespace(world: MiniInternet) -> None:
    # Nothing listens on the machine's own port 443 because of us.
    done = subprocess.run(
        ["ip", "netns", "identify", str(world.nginx.daemon.pid)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.stdout.strip() == world.netns.name
