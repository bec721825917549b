"""Property-based tests (hypothesis) for tenant files, the model and the renderer.

1. Every tenant file that validates renders to bytes that the strict,
   independent reader in ``support.strict_policy`` accepts, with the same
   mode, the same mx patterns (in A-labels, lower case, in the order
   written) and the same max_age.
2. A valid file broken in one known place is refused with an error on
   exactly that line, naming the file.
3. Whatever a file holds (generated YAML-ish text, or any bytes), reading
   it never raises, every problem names the file and a line inside it, and
   a tenant comes back if and only if there is no error; when one does, (1)
   holds for it.

Expected A-labels come from Python's own ``idna`` codec (IDNA 2003), not
from the ``idna`` package the model uses; the scripts drawn from are ones
where both agree.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.strict_policy import MAX_AGE_LIMIT, parse_policy

from policy_host.errors import Problem
from policy_host.model import Policy, mx_pattern
from policy_host.read.tenantfile import parse_tenant
from policy_host.render import render

DOMAIN = "t.example"
PATH = Path("/srv/tenants/t.example.yaml")
MODES = ("enforce", "testing", "none")
# Examples per property in the suite; POLICY_HOST_EXAMPLES=5000 for a long run.
EXAMPLES = int(os.environ.get("POLICY_HOST_EXAMPLES", "120"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# One script per IDN label (IDNA 2003 and 2008 agree on these letters).
SCRIPTS = (
    "äöüéèñçåøæ",
    "абвгдежзиклмнопрстуфхцчшыэюя",
    "αβγδεζηθικλμνξοπρτυφχψω",
    "中文日本語漢字",
)


# -- strategies -------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    written: str
    served: str


def _cased(text: str, how: str) -> str:
    return {"lower": text, "upper": text.upper(), "title": text.title()}[how]


ALNUM = string.ascii_lowercase + string.digits


@st.composite
def ascii_labels(draw: st.DrawFn) -> Name:
    label = draw(st.sampled_from(ALNUM))
    inner = draw(st.text(alphabet=ALNUM + "-", max_size=20))
    if inner:
        label += inner + draw(st.sampled_from(ALNUM))
    if label[2:4] == "--":
        label = label[:2] + "x" + label[3:]
    return Name(_cased(label, draw(st.sampled_from(["lower", "upper", "title"]))), label)


@st.composite
def idn_labels(draw: st.DrawFn) -> Name:
    script = draw(st.sampled_from(SCRIPTS))
    text = draw(st.text(alphabet=script + "0123456789", min_size=1, max_size=12))
    letter = draw(st.sampled_from(script))
    label = letter + text
    served = label.encode("idna").decode("ascii")
    written = _cased(label, draw(st.sampled_from(["lower", "upper"])))
    return Name(written, served)


@st.composite
def hostnames(draw: st.DrawFn) -> Name:
    labels = draw(
        st.lists(st.one_of(ascii_labels(), ascii_labels(), idn_labels()), min_size=1, max_size=4)
    )
    tld = draw(st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=6))
    labels.append(Name(tld, tld))
    served = ".".join(label.served for label in labels)
    if len(served) > 253 or any(len(label.served) > 63 for label in labels):
        return Name("mx.example.com", "mx.example.com")
    return Name(".".join(label.written for label in labels), served)


@st.composite
def mx_patterns(draw: st.DrawFn) -> Name:
    host = draw(hostnames())
    if draw(st.integers(0, 3)) == 0 and len(host.served) <= 251:
        return Name("*." + host.written, "*." + host.served)
    return host


def _quoted(text: str, how: str) -> str:
    if how == "double":
        return json.dumps(text, ensure_ascii=False)
    if how == "single":
        return "'" + text.replace("'", "''") + "'"
    return text


@dataclass(frozen=True)
class Case:
    """A tenant file's text and what it must be served as."""

    lines: tuple[str, ...]
    mode: str
    mx: tuple[str, ...]
    max_age: int
    # 1-based line of each key, and of each mx item.
    key_lines: dict[str, int]
    mx_lines: tuple[int, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@st.composite
def valid_cases(draw: st.DrawFn) -> Case:
    mode = draw(st.sampled_from(MODES))
    patterns = draw(
        st.lists(
            mx_patterns(),
            min_size=0 if mode == "none" else 1,
            max_size=6,
            unique_by=lambda n: n.served,
        )
    )
    max_age = draw(st.integers(0, MAX_AGE_LIMIT))
    keys = ["mode", "max_age"]
    empty_mx_key = draw(st.booleans())
    if patterns or empty_mx_key:
        keys.append("mx")
    if draw(st.booleans()):
        keys.append("domain")
    if draw(st.booleans()):
        keys.append("note")
    keys = draw(st.permutations(keys))
    flow = draw(st.booleans())
    lines: list[str] = []
    key_lines: dict[str, int] = {}
    mx_lines: list[int] = []
    for key in keys:
        if draw(st.integers(0, 4)) == 0:
            lines.append("# " + draw(st.text(alphabet=string.ascii_letters + " :#-", max_size=20)))
        key_lines[key] = len(lines) + 1
        if key == "mode":
            lines.append(f"mode: {_quoted(mode, draw(st.sampled_from(['plain', 'double'])))}")
        elif key == "max_age":
            lines.append(f"max_age: {max_age}")
        elif key == "domain":
            lines.append(f"domain: {_cased(DOMAIN, draw(st.sampled_from(['lower', 'upper'])))}")
        elif key == "note":
            note = draw(
                st.text(
                    alphabet=string.ascii_letters + string.digits + " .,'", min_size=1, max_size=30
                )
            )
            lines.append(f"note: {_quoted(note, 'single')}")
        else:
            items = []
            for pattern in patterns:
                how = draw(st.sampled_from(["double", "single", "plain"]))
                if pattern.written.startswith("*"):
                    how = draw(st.sampled_from(["double", "single"]))  # '*' starts an alias
                items.append(_quoted(pattern.written, how))
            if flow or not items:
                lines.append("mx: [" + ", ".join(items) + "]")
                mx_lines = [len(lines)] * len(items)
            else:
                lines.append("mx:")
                indent = draw(st.sampled_from(["", "  ", "    "]))
                for item in items:
                    lines.append(f"{indent}- {item}")
                    mx_lines.append(len(lines))
    return Case(
        tuple(lines),
        mode,
        tuple(p.served for p in patterns),
        max_age,
        key_lines,
        tuple(mx_lines),
    )


def read(data: bytes) -> tuple[object, list[Problem]]:
    problems: list[Problem] = []
    return parse_tenant(PATH, data, DOMAIN, problems), problems


# -- 1. valid tenants round-trip through the strict reader -------------------


@SETTINGS
@given(valid_cases())
@example(Case(("mode: none", "max_age: 0"), "none", (), 0, {}, ()))
def test_every_valid_tenant_renders_to_a_strict_policy_with_the_same_fields(case: Case) -> None:
    tenant, problems = read(case.text.encode("utf-8"))
    assert tenant is not None, [str(p) for p in problems]
    assert not [p for p in problems if p.is_error]
    parsed = parse_policy(render(tenant.policy))  # type: ignore[attr-defined]
    assert (parsed.mode, parsed.mx, parsed.max_age) == (case.mode, case.mx, case.max_age)


@SETTINGS
@given(
    st.sampled_from(MODES),
    st.lists(mx_patterns(), max_size=8, unique_by=lambda n: n.served),
    st.integers(0, MAX_AGE_LIMIT),
)
def test_every_policy_the_model_accepts_renders_strictly(
    mode: str, patterns: list[Name], max_age: int
) -> None:
    mx = tuple(mx_pattern(p.written).ascii for p in patterns)
    assert mx == tuple(p.served for p in patterns)
    if mode != "none" and not mx:
        return
    body = render(Policy(mode, mx, max_age))
    assert parse_policy(body) == type(parse_policy(body))(mode, mx, max_age)


# -- 2. one known break, one error on that line ------------------------------

INVALID_MX = (
    "*.*.{h}",
    "*{h}",
    "x..{h}",
    "{h}.",
    ".{h}",
    "{long}.{h}",
    "{huge}{h}",
    "_x.{h}",
    "-x.{h}",
    "x-.{h}",
    "ab--cd.{h}",
    "xn--zz.{h}",
    "x y.{h}",
    "x\u200b.{h}",
    "\uff58.{h}",
    "x.{h}*",
    "192.0.2.1",
    "*",
    "*.",
)


@st.composite
def broken_cases(draw: st.DrawFn) -> tuple[str, int, str]:
    """(text, line of the one error, how its message starts)."""
    case = draw(valid_cases())
    lines = list(case.lines)
    kind = draw(st.sampled_from(["mode", "mx", "max_age", "unknown", "duplicate", "tab"]))
    if kind == "mx" and not case.mx_lines:
        kind = "max_age"
    if kind == "mode":
        bad = draw(st.text(alphabet=string.ascii_letters, min_size=1, max_size=12))
        if bad in MODES:
            bad += "d"
        line = case.key_lines["mode"]
        lines[line - 1] = f"mode: {json.dumps(bad)}"
        return "\n".join(lines) + "\n", line, "mode: expected one of"
    if kind == "mx":
        index = draw(st.integers(0, len(case.mx_lines) - 1))
        host = case.mx[index].removeprefix("*.")[:60].strip(".-") or "a.example"
        bad = draw(st.sampled_from(INVALID_MX)).format(
            h=host, long="a" * 64, huge="abcdefghi." * 26
        )
        line = case.mx_lines[index]
        written = [p for p in case.mx]
        written[index] = bad
        quoted = [json.dumps(p, ensure_ascii=False) for p in written]
        if lines[line - 1].startswith("mx: ["):
            lines[line - 1] = "mx: [" + ", ".join(quoted) + "]"
        else:
            indent = lines[line - 1].partition("-")[0]
            lines[line - 1] = f"{indent}- {quoted[index]}"
        return "\n".join(lines) + "\n", line, "mx "
    if kind == "max_age":
        bad_age = draw(
            st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_AGE_LIMIT + 1))
        )
        line = case.key_lines["max_age"]
        lines[line - 1] = f"max_age: {bad_age}"
        message = "max_age: expected 0..31557600"
        if abs(bad_age).bit_length() > 64:
            message = "cannot read value: number too large"
        return "\n".join(lines) + "\n", line, message
    if kind == "unknown":
        key = "x_" + draw(st.text(alphabet=string.ascii_lowercase + "_", max_size=15))
        if key in ("mode", "mx", "max_age", "domain", "note", "tlsrpt_rua"):
            key += "_x"
        lines.append(f"{key}: 1")
        return "\n".join(lines) + "\n", len(lines), f"unknown key '{key}'"
    if kind == "duplicate":
        key = draw(st.sampled_from(sorted(case.key_lines)))
        lines.append(f"{key}: again")
        first = case.key_lines[key]
        return "\n".join(lines) + "\n", len(lines), f"duplicate key '{key}' (first on line {first})"
    line = draw(st.integers(1, len(lines)))
    old = lines[line - 1]
    position = draw(st.integers(0, len(old)))
    lines[line - 1] = old[:position] + "\t" + old[position:]
    return "\n".join(lines) + "\n", line, "tab character"


@SETTINGS
@given(broken_cases())
def test_a_file_broken_in_one_place_is_refused_on_that_line(
    broken: tuple[str, int, str],
) -> None:
    text, line, message = broken
    tenant, problems = read(text.encode("utf-8"))
    errors = [p for p in problems if p.is_error]
    assert tenant is None
    assert errors, text
    assert [(p.path, p.line) for p in errors] == [(str(PATH), line)], (text, problems)
    assert errors[0].message.startswith(message), (text, str(errors[0]))
    assert str(errors[0]).startswith(f"{PATH}:{line}: ")


# -- 3. anything at all: no crash, located problems, tenant iff no error ------

KEYS = ("mode", "mx", "max_age", "domain", "note", "tlsrpt_rua", "Mode", "mx ", "x")
SCALARS = (
    "enforce", "testing", "none", "Enforce", "enforce ", "86400", "604800", "0", "-1",
    "31557601", "1:30", "0x10", "0o17", "1_000", "1e3", ".inf", "~", "null", "yes", "no",
    "true", "mx.example.com", "MX.Example.COM", "'*.example.com'", '"*.*.example.com"',
    "*example.com", "example..com", "mx.example.com.", "xn--bcher-kva.example",
    "xn--zz.example", "mx.bücher.example", "\uff4d\uff58.example", "a\u200bb.example",
    "[mx.example.com]", "[]", "{}", "{a: b}", "&a x", "*a", "!!binary aGk=",
    "!!python/object:os.system x", "'unterminated", '"bad \\q escape"', "|", ">-",
    "2001-13-45", "2024-01-01", "mailto:a@b.example", "https://r.example/x", "- item",
    "?", ":", "#", "%", "@", "`", "\"\"", "''", "-", "0x" + "f" * 40,
)  # fmt: skip


@st.composite
def yamlish(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        indent = draw(st.sampled_from(["", "", "", " ", "  ", "    "]))
        key = draw(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=6)))
        shape = draw(st.integers(0, 4))
        if shape == 0:
            lines.append(f"{indent}{key}:")
            for _ in range(draw(st.integers(0, 3))):
                value = draw(st.one_of(st.sampled_from(SCALARS), st.text(max_size=10)))
                lines.append(f"{indent}{draw(st.sampled_from(['  ', '', '   ']))}- {value}")
        elif shape == 1:
            lines.append(draw(st.text(max_size=20)))
        else:
            value = draw(
                st.one_of(
                    st.sampled_from(SCALARS),
                    st.integers().map(str),
                    st.text(max_size=12),
                )
            )
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


def _check_any(data: bytes) -> None:
    tenant, problems = read(data)
    # The lines an editor shows (a final newline starts no new line).
    count = max(1, len(data.decode("utf-8", "replace").splitlines()))
    for problem in problems:
        assert problem.path == str(PATH)
        assert 1 <= problem.line <= count, (data, str(problem))
        assert str(problem).startswith(f"{PATH}:{problem.line}: ")
    errors = [p for p in problems if p.is_error]
    assert (tenant is None) == bool(errors), (data, problems)
    if tenant is not None:
        policy = tenant.policy  # type: ignore[attr-defined]
        parsed = parse_policy(render(policy))
        assert (parsed.mode, parsed.mx, parsed.max_age) == (policy.mode, policy.mx, policy.max_age)


@settings(max_examples=3 * EXAMPLES, deadline=None)
@given(yamlish())
def test_any_yamlish_text_is_read_without_crashing_and_problems_are_located(text: str) -> None:
    _check_any(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_read_without_crashing_and_problems_are_located(data: bytes) -> None:
    _check_any(data)
