"""The quick reader of tenant files agrees with the full one.

A file with nothing wrong is read without line numbers
(``tenantfile._quick_fields`` on ``yamlfile.plain_mapping``); anything else
goes to the full reader, which says what and where. The quick reader may
decline any file, but a file it accepts must be one the full reader finds
no problem in, with the same fields. And ``validate``'s check of every file
(``load_tenants(check_only=True)``) reports what the full load reports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from test_hostile_tenants import CORPUS, make_tree
from test_properties import SETTINGS, Case, valid_cases, yamlish

from policy_host.errors import Problem
from policy_host.read import tenantfile
from policy_host.read.config import load_config
from policy_host.read.tenants import load_tenants

DOMAIN = "t.example"
PATH = Path("/srv/tenants/t.example.yaml")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tenants"

GOOD = b"mode: enforce\nmx:\n  - mx1.t.example\n  - '*.mx.t.example'\nmax_age: 604800\n"
# Each of these is read by the full reader: a problem, or not the plainest kind.
DECLINED = {
    "a warning": b"mode: testing\nmx:\n  - mx.t.example\nmax_age: 3600\n",
    "under a week for enforce": b"mode: enforce\nmx: [mx.t.example]\nmax_age: 86400\n",
    "an IDN mx": "mode: testing\nmx:\n  - mx.bücher.example\nmax_age: 604800\n".encode(),
    "an unknown key": GOOD + b"mood: enforce\n",
    "promote overrides": GOOD + b"promote:\n  auto: true\n",
    "a quoted max_age": b"mode: none\nmax_age: '604800'\n",
    "an octal max_age": b"mode: none\nmax_age: 0604800\n",
    "max_age 0": b"mode: none\nmax_age: 0\n",
    "mx twice": b"mode: testing\nmx:\n  - mx.t.example\n  - MX.t.example\nmax_age: 604800\n",
    "no mx in enforce": b"mode: enforce\nmax_age: 604800\n",
    "mx as text": b"mode: testing\nmx: mx.t.example\nmax_age: 604800\n",
    "an empty mx item": b"mode: testing\nmx: ['', mx.t.example]\nmax_age: 604800\n",
    "an anchor": b"mode: testing\nmx: [&a mx.t.example]\nmax_age: 604800\n",
    "a tag": b"mode: !!str testing\nmx: [mx.t.example]\nmax_age: 604800\n",
    "a tab": b"mode: testing\nmx: [mx.t.example]\nmax_age:\t604800\n",
    "another domain": GOOD + b"domain: other.example\n",
    "an empty note": GOOD + b"note: ''\n",
    "a bad rua": GOOD + b"tlsrpt_rua: ftp://x.example\n",
    "a byte order mark": b"\xef\xbb\xbf" + GOOD,
    "not UTF-8": GOOD + b"note: \xff\n",
    "a list": b"- mode\n",
    "nothing": b"",
}


def full(data: bytes) -> tuple[object, list[Problem]]:
    problems: list[Problem] = []
    tenant = tenantfile._full_tenant(PATH, data, DOMAIN, problems)[0]
    return tenant, problems


def agrees(data: bytes) -> bool:
    """Whether the quick reader accepted ``data``; if it did, the full
    reader found no problem and the same fields."""
    quick = tenantfile._quick_fields(data, DOMAIN)
    if quick is None:
        return False
    tenant, problems = full(data)
    assert problems == [], problems
    assert tenant is not None
    policy = tenant.policy  # type: ignore[attr-defined]
    fields = (policy.mode, policy.mx, policy.max_age, tenant.note, tenant.tlsrpt_rua)  # type: ignore[attr-defined]
    assert quick == fields
    return True


def test_a_plain_valid_file_is_read_quickly_with_the_same_fields() -> None:
    data = GOOD + b"domain: T.example\nnote: Ack\ntlsrpt_rua: [mailto:tls@t.example]\n"
    assert agrees(data)
    assert agrees(b"mode: none\nmax_age: 86400\n")


@pytest.mark.parametrize("why", sorted(DECLINED))
def test_a_file_with_a_problem_or_of_another_kind_goes_to_the_full_reader(why: str) -> None:
    assert not agrees(DECLINED[why])
    problems: list[Problem] = []
    tenant, _ = tenantfile.parse_tenant_body(PATH, DECLINED[why], DOMAIN, problems)
    assert (tenant, problems) == full(DECLINED[why])


def test_every_corpus_and_example_file_agrees() -> None:
    files = [p for p in (*CORPUS.iterdir(), *EXAMPLES.iterdir()) if p.suffix == ".yaml"]
    accepted = [p.name for p in files if agrees(p.read_bytes())]
    assert accepted, "the examples hold plain valid files"


@SETTINGS
@given(valid_cases())
def test_every_generated_valid_file_agrees(case: Case) -> None:
    agrees(case.text.encode("utf-8"))


@SETTINGS
@given(yamlish())
def test_every_generated_yamlish_text_agrees(text: str) -> None:
    agrees(text.encode("utf-8"))


def test_validate_checks_report_what_the_full_load_reports(tmp_path: Path) -> None:
    config = load_config(make_tree(tmp_path))
    for example in EXAMPLES.iterdir():
        shutil.copy(example, config.tenants_dir / example.name)
    checked = load_tenants(config, cache=False, check_only=True)
    loaded = load_tenants(config, cache=False)
    assert checked.tenants == {}
    assert checked.bodies == {}
    assert (checked.problems, checked.broken, checked.sources, checked.files) == (
        loaded.problems,
        loaded.broken,
        loaded.sources,
        loaded.files,
    )
    assert checked.sources.keys() == loaded.tenants.keys()
