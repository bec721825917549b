"""The parse cache: unchanged tenant files are not read again, anything else
is, and a cached run reports exactly what a fresh one does."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from policy_host.read import parsecache, scan, tenants
from policy_host.read.config import ProviderConfig, load_config
from policy_host.read.tenants import LoadResult, load_tenants

GOOD = "mode: enforce\nmx:\n  - mx1.{d}\nmax_age: 604800\n"
# A warning (short max_age) and an error, so that problems are cached too.
WARN = "mode: testing\nmx: [mx.{d}]\nmax_age: 3600\n"
BROKEN = "mode: enforced\nmx: [mx.{d}]\nmax_age: 604800\n"
PAST = time.time() - 3600  # older than the racy window


def write(config: ProviderConfig, name: str, text: str, *, when: float = PAST) -> Path:
    path = config.tenants_dir / f"{name}.yaml"
    path.write_text(text.format(d=name))
    os.utime(path, (when, when))
    return path


@pytest.fixture
def site(empty_tree: Path, monkeypatch: pytest.MonkeyPatch) -> ProviderConfig:
    # Files made by a test are only milliseconds old (ctime too, whatever
    # their mtime): let them be cached at once.
    monkeypatch.setattr(parsecache, "RACY_SECONDS", 0.0)
    config = load_config(empty_tree / "config.yaml")
    write(config, "a.example", GOOD)
    write(config, "b.example", WARN)
    write(config, "c.example", BROKEN)
    return config


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tenant files actually read."""
    seen: list[str] = []
    real: Callable[[Path, ProviderConfig], parsecache.Outcome] = tenants.load_file

    def counting(path: Path, config: ProviderConfig) -> parsecache.Outcome:
        seen.append(path.name)
        return real(path, config)

    monkeypatch.setattr(tenants, "load_file", counting)
    return seen


def saved(config: ProviderConfig) -> LoadResult:
    """Load, then store what was read (as the snapshot compile does)."""
    result = load_tenants(config, save_cache=True)
    result.save_cache()
    return result


def same(a: LoadResult, b: LoadResult) -> None:
    assert (a.tenants, a.bodies, a.sources, a.broken, a.files, a.complete) == (
        b.tenants,
        b.bodies,
        b.sources,
        b.broken,
        b.files,
        b.complete,
    )
    assert a.problems == b.problems


def test_unchanged_files_are_not_read_again(site: ProviderConfig, reads: list[str]) -> None:
    first = saved(site)
    assert sorted(reads) == ["a.example.yaml", "b.example.yaml", "c.example.yaml"]
    reads.clear()
    second = load_tenants(site)
    assert reads == []
    same(first, second)
    assert [str(p) for p in second.problems if not p.is_error]  # the warning, again
    assert second.broken == {"c.example": str(site.tenants_dir / "c.example.yaml")}


def test_a_changed_file_is_read_again_even_with_its_old_size_and_mtime(
    site: ProviderConfig, reads: list[str]
) -> None:
    saved(site)
    path = site.tenants_dir / "a.example.yaml"
    before = path.stat()
    # Same length, mtime put back (as `cp -p` or a careless tool would):
    # only ctime shows the change.
    path.write_text(path.read_text().replace("mx1.", "mx2."))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    reads.clear()
    result = load_tenants(site)
    assert reads == ["a.example.yaml"]
    assert result.tenants["a.example"].policy.mx == ("mx2.a.example",)


def test_files_written_just_now_are_not_cached(
    site: ProviderConfig, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parsecache, "RACY_SECONDS", 2.0)
    write(site, "new.example", GOOD, when=time.time())
    saved(site)
    reads.clear()
    load_tenants(site)
    # Racily clean (ctime is now, whatever the mtime says): read again, all.
    assert sorted(reads) == [
        "a.example.yaml",
        "b.example.yaml",
        "c.example.yaml",
        "new.example.yaml",
    ]


def test_removed_and_added_files(site: ProviderConfig, reads: list[str]) -> None:
    saved(site)
    (site.tenants_dir / "a.example.yaml").unlink()
    write(site, "d.example", GOOD)
    reads.clear()
    result = saved(site)
    assert reads == ["d.example.yaml"]
    assert sorted(result.tenants) == ["b.example", "d.example"]
    cached = json.loads(site.parse_cache_path.read_text())["files"]
    assert sorted(cached) == ["b.example.yaml", "c.example.yaml", "d.example.yaml"]


@pytest.mark.parametrize("content", ["{not json", '{"format": 2}', "[]", ""])
def test_a_damaged_cache_is_ignored(site: ProviderConfig, reads: list[str], content: str) -> None:
    fresh = load_tenants(site, cache=False)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    site.parse_cache_path.write_text(content)
    reads.clear()
    same(load_tenants(site), fresh)
    assert len(reads) == 3


def test_a_damaged_entry_is_read_again(site: ProviderConfig, reads: list[str]) -> None:
    saved(site)
    raw = json.loads(site.parse_cache_path.read_text())
    raw["files"]["a.example.yaml"][1] = ["a.example", ["enforce"], [], None]
    site.parse_cache_path.write_text(json.dumps(raw))
    reads.clear()
    result = load_tenants(site)
    assert reads == ["a.example.yaml"]
    assert "a.example" in result.tenants


def test_a_cache_made_for_another_config_is_ignored(
    site: ProviderConfig, reads: list[str], empty_tree: Path
) -> None:
    saved(site)
    config_path = empty_tree / "config.yaml"
    config_path.write_text(config_path.read_text().replace("_mta-sts.provider", "_sts.provider"))
    other = load_config(config_path)
    reads.clear()
    load_tenants(other)
    assert len(reads) == 3


def test_without_tenants_the_result_has_bodies_and_sources(site: ProviderConfig) -> None:
    full = saved(site)
    lean = load_tenants(site, tenants=False)
    assert lean.tenants == {}
    assert (lean.bodies, lean.sources, lean.problems) == (full.bodies, full.sources, full.problems)


def test_many_files_in_several_processes_give_the_same_result(
    site: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(40):
        write(site, f"t{n:02d}.example", (GOOD, WARN, BROKEN)[n % 3])
    monkeypatch.setattr(tenants, "PARALLEL_MIN_FILES", 8)
    same(load_tenants(site, jobs=2, cache=False), load_tenants(site, jobs=1, cache=False))


def test_an_unwritable_cache_is_only_slower(
    site: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(parsecache, "replace_file", refuse)
    same(saved(site), load_tenants(site, cache=False))


@pytest.mark.parametrize(
    "damage",
    [
        lambda ident: 5,  # not a list
        lambda ident: [7, ["a.example", None, [], None]],  # identity not a list
        lambda ident: [ident[:2], ["a.example", None, [], None]],  # another identity
        lambda ident: [  # body not text
            ident,
            ["a.example", ["testing", ["mx.a.example"], 86400, None, []], [], 12],
        ],
        lambda ident: [ident, ["a.example", None, [[1]], None]],  # a problem
        lambda ident: [ident],  # no outcome
    ],
)
def test_an_entry_of_the_wrong_shape_is_read_again(
    site: ProviderConfig, reads: list[str], damage: Callable[[list[int]], object]
) -> None:
    fresh = saved(site)
    raw = json.loads(site.parse_cache_path.read_text())
    raw["files"]["a.example.yaml"] = damage(raw["files"]["a.example.yaml"][0])
    site.parse_cache_path.write_text(json.dumps(raw))
    reads.clear()
    same(load_tenants(site), fresh)
    assert reads == ["a.example.yaml"]


@pytest.fixture
def large(site: ProviderConfig, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A site whose cache counts as large (the folder is looked at in a
    forked child while the cache is read); returns the pids that scanned."""
    for n in range(40):
        write(site, f"t{n:02d}.example", (GOOD, WARN, BROKEN)[n % 3])
    monkeypatch.setattr(tenants, "PARALLEL_MIN_FILES", 1)
    scanners: list[int] = []
    real = scan.list_folder

    def counted(folder: Path, identities: bool = True) -> scan.Listing:
        scanners.append(os.getpid())  # the child's list is its own copy
        return real(folder, identities)

    monkeypatch.setattr(scan, "list_folder", counted)
    return scanners


@pytest.mark.parametrize("ahead", [False, True])
def test_a_child_scans_the_folder_while_a_large_cache_is_read(
    site: ProviderConfig, large: list[int], ahead: bool
) -> None:
    saved(site)
    write(site, "t07.example", GOOD.replace("604800", "1209600"))
    large.clear()
    memo = tenants.LoadMemo()
    if ahead:  # as `reload` does before it reads what is served
        memo.scan_ahead(site, jobs=2)
    result = load_tenants(site, jobs=2, memo=memo)
    assert large == []  # the child's scan, not one here
    assert memo.ahead is None  # a scan ahead is used once
    same(result, load_tenants(site, cache=False))
    assert result.tenants["t07.example"].policy.max_age == 1209600


def test_a_child_that_dies_before_it_answers_means_a_scan_here(
    site: ProviderConfig, large: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved(site)
    parent = os.getpid()
    real = scan.list_folder

    def die_in_child(folder: Path, identities: bool = True) -> scan.Listing:
        if os.getpid() != parent:
            os._exit(1)
        return real(folder, identities)

    monkeypatch.setattr(scan, "list_folder", die_in_child)
    large.clear()
    same(load_tenants(site, jobs=2), load_tenants(site, cache=False))
    assert large == [parent, parent]  # the fallback, then the uncached load


def test_a_folder_the_child_cannot_read_is_reported(site: ProviderConfig, large: list[int]) -> None:
    saved(site)
    for path in site.tenants_dir.iterdir():
        path.unlink()
    site.tenants_dir.rmdir()
    result = load_tenants(site, jobs=2)
    assert not result.complete
    assert [p.message for p in result.problems] == [
        "cannot read tenants folder: No such file or directory"
    ]


def test_racily_clean_files_are_judged_from_when_the_scan_ahead_began(
    site: ProviderConfig, large: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved(site)
    before = json.loads(site.parse_cache_path.read_text())["files"]["t07.example.yaml"]
    monkeypatch.setattr(parsecache, "RACY_SECONDS", 2.0)
    write(site, "t07.example", GOOD.replace("604800", "1209600"), when=time.time() - 1)
    memo = tenants.LoadMemo()
    memo.scan_ahead(site, jobs=2)
    real = time.time_ns
    # The load itself starts much later (a compile waiting for the lock).
    monkeypatch.setattr(time, "time_ns", lambda: real() + 10_000_000_000)
    result = load_tenants(site, jobs=2, save_cache=True, memo=memo)
    monkeypatch.setattr(time, "time_ns", real)
    # Written 1 s before it was looked at: racily clean, so not stored (its
    # old entry stays, with an identity that no longer matches, and so the
    # cache is not even written again).
    assert not result.save_cache()
    cached = json.loads(site.parse_cache_path.read_text())["files"]
    assert cached["t07.example.yaml"] == before
    assert result.tenants["t07.example"].policy.max_age == 1209600


@pytest.mark.parametrize("other_compile", [False, True])
def test_a_scan_ahead_is_dropped_when_another_compile_ran_meanwhile(
    site: ProviderConfig, large: list[int], monkeypatch: pytest.MonkeyPatch, other_compile: bool
) -> None:
    from policy_host.serve.compiler import compile_snapshot

    compile_snapshot(site, jobs=1)
    real = scan.list_folder

    def at_once(folder: Path) -> scan.Scanned:
        found = real(folder)  # the listing is made now, not in a child
        return lambda: found

    monkeypatch.setattr(scan, "list_beside", at_once)
    memo = tenants.LoadMemo()
    memo.scan_ahead(site, jobs=2)
    write(site, "new.example", GOOD)  # made after the folder was listed
    if other_compile:  # another process's compile replaces the snapshot
        text = site.snapshot_path.read_bytes()
        site.snapshot_path.unlink()
        site.snapshot_path.write_bytes(text)
    result = load_tenants(site, jobs=2, memo=memo)
    assert memo.ahead is None
    # The listing made before is only used while no compile ran since.
    assert ("new.example" in result.tenants) is other_compile
