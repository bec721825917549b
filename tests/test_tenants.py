"""Every tenant-file rule, with the exact ``path:line: message`` it produces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from policy_host.errors import Severity
from policy_host.read.config import load_config
from policy_host.read.tenants import load_tenants

Write = Callable[[str, str | bytes], Path]

GOOD = "mode: enforce\nmx:\n  - mx1.example.com\nmax_age: 604800\n"

# (file name, content, line, message fragment) — each the first error reported.
ERRORS: list[tuple[str, str | bytes, int, str]] = [
    (
        "a.example.yaml",
        "mode: enforced\nmx: [m.a.example]\nmax_age: 604800\n",
        1,
        "mode: expected one of enforce, testing, none (got 'enforced')",
    ),
    (
        "a.example.yaml",
        "mode: Enforce\nmx: [m.a.example]\nmax_age: 604800\n",
        1,
        "(write it in lower case)",
    ),
    (
        "a.example.yaml",
        "mode: 1\nmx: [m.a.example]\nmax_age: 604800\n",
        1,
        "mode: expected text (got 1)",
    ),
    ("a.example.yaml", "mx: [m.a.example]\nmax_age: 604800\n", 1, "mode: required but missing"),
    ("a.example.yaml", "mode: enforce\nmax_age: 604800\n", 1, "mx: required but missing"),
    (
        "a.example.yaml",
        "mode: testing\nmx: []\nmax_age: 604800\n",
        2,
        "mx: at least one pattern is required in mode testing",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx: m.a.example\nmax_age: 604800\n",
        2,
        "mx: expected a list (got 'm.a.example')",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx:\n  - 7\nmax_age: 604800\n",
        3,
        "mx: expected text items (got 7)",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx:\n  - ok.a.example\n  - '*.*.a.example'\nmax_age: 604800\n",
        4,
        "'*' may only be the whole leftmost label",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx:\n  - m.a.example\n  - M.A.example\nmax_age: 604800\n",
        4,
        "mx 'M.A.example' is listed twice (first on line 3)",
    ),
    ("a.example.yaml", "mode: enforce\nmx: [m.a.example]\n", 1, "max_age: required but missing"),
    (
        "a.example.yaml",
        "mode: enforce\nmx: [m.a.example]\nmax_age: 31557601\n",
        3,
        "max_age: expected 0..31557600 seconds (got 31557601)",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx: [m.a.example]\nmax_age: -5\n",
        3,
        "max_age: expected 0..31557600",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx: [m.a.example]\nmax_age: '86400'\n",
        3,
        "max_age: expected a whole number (got '86400')",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx: [m.a.example]\nmax_age: 1.5e6\n",
        3,
        "max_age: expected a whole number",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmx: [m.a.example]\nmax_age: true\n",
        3,
        "max_age: expected a whole number (got true)",
    ),
    (
        "a.example.yaml",
        GOOD + "max_agee: 5\n",
        5,
        "unknown key 'max_agee'; did you mean 'max_age'?",
    ),
    (
        "a.example.yaml",
        GOOD + "domain: b.example\n",
        5,
        "domain: 'b.example' does not match the file name",
    ),
    (
        "a.example.yaml",
        GOOD + "tlsrpt_rua: http://r.example/\n",
        5,
        "only mailto: and https: URIs are allowed",
    ),
    (
        "a.example.yaml",
        "mode: enforce\nmode: testing\n",
        2,
        "duplicate key 'mode' (first on line 1)",
    ),
    ("a.example.yaml", "mode: enforce\n\tmx: [a.b]\n", 2, "tab character"),
    ("a.example.yaml", "", 1, "file is empty"),
    ("a.example.yaml", "# only a comment\n", 1, "file is empty"),
    ("a.example.yaml", "- mode: enforce\n", 1, "expected a mapping of settings, got a list"),
    ("a.example.yaml", "just text\n", 1, "expected a mapping of settings, got a single value"),
    ("a.example.yaml", b"\xef\xbb\xbf" + GOOD.encode(), 1, "byte order mark"),
    ("a.example.yaml", b"mode: enforce\nnote: caf\xe9\n", 2, "not UTF-8 text (byte 0xe9)"),
    ("a.example.yaml", b"\x00\x01\x02binary", 1, "YAML syntax"),
    ("a.example.yaml", "mode: [enforce\nmx: x\n", 2, "YAML syntax"),
    ("a.example.yaml", "mode: !!python/object:os.system x\n", 1, "cannot read value"),
    ("a.example.yaml", "x: &a [1]\ny: *a\n", 2, "anchors and aliases are not allowed"),
    ("a.example.yaml", "? [a, b]\n: 1\n", 1, "keys must be plain text"),
    ("a.example.yaml", "1: x\n", 1, "keys must be plain text (got '1')"),
    ("a.example.yaml", "---\nmode: none\n---\nmode: none\n", 3, "YAML syntax"),
    ("localhost.yaml", GOOD, 1, "needs at least two labels"),
    ("a..example.yaml", GOOD, 1, "has an empty label"),
    ("under_score.example.yaml", GOOD, 1, "may hold only letters, digits"),
    (("a" * 57 + ".") * 4 + "example.yaml", GOOD, 1, "is too long"),
]


@pytest.mark.parametrize(("name", "content", "line", "message"), ERRORS)
def test_tenant_error_names_file_line_and_reason(
    empty_tree: Path, write_tenant: Write, name: str, content: str | bytes, line: int, message: str
) -> None:
    path = write_tenant(name, content)
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert result.tenants == {}
    errors = result.errors
    assert errors, "expected an error"
    assert errors[0].path == str(path)
    assert (errors[0].line, message in errors[0].message) == (line, True), str(errors[0])
    assert str(errors[0]).startswith(f"{errors[0].path}:{line}: ")


def test_all_errors_in_a_file_are_collected(empty_tree: Path, write_tenant: Write) -> None:
    write_tenant(
        "a.example.yaml",
        "mode: enforced\nmx:\n  - bad..name\n  - '*x.a.example'\nmax_age: 99999999\nextra: 1\n",
    )
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert [(p.line, p.is_error) for p in result.problems] == [
        (1, True),
        (3, True),
        (4, True),
        (5, True),
        (6, True),
    ]


def test_broken_tenant_does_not_affect_others(empty_tree: Path, write_tenant: Write) -> None:
    write_tenant("good.example.yaml", GOOD)
    write_tenant("bad.example.yaml", "mode: [\n")
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert list(result.tenants) == ["good.example"]
    assert result.broken == {"bad.example": str(empty_tree / "tenants" / "bad.example.yaml")}


@pytest.mark.parametrize(
    ("first", "second"),
    [("a.example.yaml", "A.Example.yaml"), ("bücher.example.yaml", "xn--bcher-kva.example.yaml")],
)
def test_duplicate_domain_in_two_files_is_an_error(
    empty_tree: Path, write_tenant: Write, first: str, second: str
) -> None:
    write_tenant(first, GOOD)
    write_tenant(second, GOOD)
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert result.tenants == {}
    assert any("is already defined by" in p.message for p in result.errors)


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("mode: testing\nmx: [m.a.example]\nmax_age: 3600\n", 3, "under a day"),
        ("mode: enforce\nmx: [m.a.example]\nmax_age: 86400\n", 3, "under a week"),
        (
            "mode: enforce\nmx: [mx.bücher.example]\nmax_age: 604800\n",
            2,
            "mx 'mx.bücher.example' is served as its A-label form 'mx.xn--bcher-kva.example'",
        ),
    ],
)
def test_warnings_do_not_stop_a_tenant(
    empty_tree: Path, write_tenant: Write, content: str, line: int, message: str
) -> None:
    write_tenant("a.example.yaml", content)
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert "a.example" in result.tenants
    assert [(p.line, p.severity, message in p.message) for p in result.problems] == [
        (line, Severity.WARNING, True)
    ]


def test_idn_file_name_is_served_as_a_label(empty_tree: Path, write_tenant: Write) -> None:
    write_tenant("bücher.example.yaml", GOOD.replace("mx1.example.com", "mx.xn--bcher-kva.example"))
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert list(result.tenants) == ["xn--bcher-kva.example"]
    assert "served as its A-label 'xn--bcher-kva.example'" in result.problems[0].message


def test_oversized_policy_is_refused(empty_tree: Path, write_tenant: Write) -> None:
    hosts = "".join(f"  - mx{i:05d}.{'a' * 50}.example\n" for i in range(1200))
    write_tenant("a.example.yaml", f"mode: enforce\nmx:\n{hosts}max_age: 604800\n")
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert "the limit is 65536" in result.errors[0].message


def test_huge_file_is_refused_without_reading_it(empty_tree: Path) -> None:
    path = empty_tree / "tenants" / "a.example.yaml"
    with open(path, "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost no disk
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert "the limit is 262144" in result.errors[0].message


def test_alias_bomb_is_refused_quickly(empty_tree: Path, write_tenant: Write) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    write_tenant("a.example.yaml", "\n".join(lines) + "\n")
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert "anchors and aliases are not allowed" in result.errors[0].message


def test_non_yaml_files_are_ignored(empty_tree: Path, write_tenant: Write) -> None:
    write_tenant("a.example.yaml", GOOD)
    write_tenant("README.txt", "not a tenant")
    write_tenant(".hidden.example.yaml", "mode: [")
    result = load_tenants(load_config(empty_tree / "config.yaml"))
    assert (list(result.tenants), result.problems, result.files) == (["a.example"], [], 1)
