"""Building the DNS UPDATE (pure) and reading the TSIG key file."""

from __future__ import annotations

import base64
from pathlib import Path

import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.update
import pytest

from policy_host.publish.update import (
    KeyFileError,
    TsigKey,
    TxtChange,
    build_update,
    id_record_value,
    load_tsig_key,
    shows,
    txt_rdata,
    update_text,
)

# Base64 with "/" and "+" in it: a "//" must not be taken for a comment.
SECRET = base64.b64encode(b"\xff\xff\xff\xfb\xef\xbe" * 6).decode()
NAME = "customer.example._mta-sts.provider.example."


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_bind_key_file_is_read(tmp_path: Path) -> None:
    assert "//" in SECRET
    path = write_key(
        tmp_path / "k",
        "# made by tsig-keygen\n"
        '/* the apply key */ key "policy-host." {\n'
        "\talgorithm hmac-sha512; // strong\n"
        f'\tsecret "{SECRET}";\n'
        "};\n",
    )
    key = load_tsig_key(path, "hmac-sha256")
    assert (key.name, key.algorithm, key.secret) == ("policy-host.", "hmac-sha512", SECRET)
    assert SECRET not in repr(key) and SECRET not in str(key)


def test_algorithm_defaults_to_the_config(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", f'key apply {{ secret "{SECRET}"; }};')
    assert load_tsig_key(path, "hmac-sha256").algorithm == "hmac-sha256"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_group_or_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "k", f'key "a." {{ secret "{SECRET}"; }};', mode)
    with pytest.raises(KeyFileError) as info:
        load_tsig_key(path, "hmac-sha256")
    assert str(info.value) == (
        f"{path}: TSIG key file is accessible by group or others (mode {mode:04o}); "
        f"make it readable by the service user only: chmod 600 {path}"
    )
    assert info.value.exit_status == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected one key in BIND format"),
        (f'key "a." {{ secret "{SECRET}"; }}; key "b." {{ secret "{SECRET}"; }};', "(found 2)"),
        ('key "a." { algorithm hmac-sha256; };', 'key "a." has no secret'),
        ('key "a." { secret "not base64!"; };', "the secret is not base64"),
        (f'key "a." {{ algorithm hmac-md5; secret "{SECRET}"; }};', "'hmac-md5' is not one of"),
    ],
)
def test_bad_key_files_are_refused_without_showing_the_secret(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_key(tmp_path / "k", text)
    with pytest.raises(KeyFileError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_tsig_key(path, "hmac-sha256")
    assert SECRET not in str(info.value)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="TSIG key file does not exist"):
        load_tsig_key(tmp_path / "nope", "hmac-sha256")


def test_txt_rdata_keeps_everything_after_the_semicolon() -> None:
    rdata = txt_rdata(id_record_value("20260101T000000abcdef12"))
    assert rdata.strings == (b"v=STSv1; id=20260101T000000abcdef12;",)
    # Zone-file text would have lost it: the trap this avoids.
    parsed = dns.rdata.from_text("IN", "TXT", "v=STSv1; id=abc;")
    assert isinstance(parsed, dns.rdtypes.ANY.TXT.TXT)
    assert parsed.strings == (b"v=STSv1",)


def test_long_txt_is_split_into_strings_that_join_back() -> None:
    value = b"v=STSv1; id=" + b"x" * 300 + b";"
    rdata = txt_rdata(value)
    assert [len(s) for s in rdata.strings] == [255, len(value) - 255]
    assert b"".join(rdata.strings) == value


def test_update_replaces_or_deletes_and_survives_the_wire() -> None:
    update = build_update(
        "provider.example.",
        [
            TxtChange(NAME, id_record_value("abc")),
            TxtChange("gone.example._mta-sts.provider.example.", None),
        ],
        300,
        None,
    )
    back = dns.message.from_wire(update.to_wire())
    assert isinstance(back, dns.update.UpdateMessage)
    added = [r for r in back.update if r.deleting is None]
    assert [b"".join(r.strings) for r in added[0]] == [b"v=STSv1; id=abc;"]
    assert added[0].ttl == 300
    assert [(r.name.to_text(), r.deleting) for r in back.update if r.deleting is not None] == [
        (NAME, dns.rdataclass.ANY),
        ("gone.example._mta-sts.provider.example.", dns.rdataclass.ANY),
    ]


def test_update_text_is_nsupdate_input_without_the_secret() -> None:
    key = TsigKey("apply.", "hmac-sha256", SECRET)
    update = build_update(
        "provider.example.",
        [
            TxtChange(NAME, id_record_value("abc")),
            TxtChange("old.example._mta-sts.provider.example.", None),
        ],
        300,
        key,
    )
    assert update_text(update, ("192.0.2.53", 53), key) == "\n".join(
        [
            "server 192.0.2.53 53",
            "zone provider.example.",
            "key hmac-sha256:apply. <secret not shown>",
            f"update delete {NAME} TXT",
            f'update add {NAME} 300 TXT "v=STSv1; id=abc;"',
            "update delete old.example._mta-sts.provider.example. TXT",
            "send",
        ]
    )
    assert update.keyring is not None  # it is signed when sent


@pytest.mark.parametrize(
    ("values", "expected", "result"),
    [
        ([b"v=STSv1; id=a;"], b"v=STSv1; id=a;", True),
        ([b"v=STSv1; id=b;"], b"v=STSv1; id=a;", False),
        ([b"v=STSv1; id=a;", b"v=STSv1; id=b;"], b"v=STSv1; id=a;", False),
        ([], b"v=STSv1; id=a;", False),
        ([], None, True),
        ([b"v=STSv1; id=a;"], None, False),
    ],
)
def test_confirmation_wants_exactly_the_record_or_none(
    values: list[bytes], expected: bytes | None, result: bool
) -> None:
    assert shows(values, expected) is result
