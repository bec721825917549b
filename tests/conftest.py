"""Shared fixtures: a provider tree in a temporary folder, the app, a client."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from support.layout import EXAMPLES

from policy_host.read.config import ProviderConfig, load_config
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.web import create_app

# Real DNS servers (knot + unbound) for the tests that need them.
pytest_plugins = ["support.fixtures_dns"]

CONFIG_TEXT = """\
tenants_dir: tenants
state_dir: var
policy_host: mta-sts.provider.example
id_zone: _mta-sts.provider.example
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the bundled example (config + tenants) that tests may edit."""
    target = tmp_path / "provider"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("var"))
    return target


@pytest.fixture
def config(tree: Path) -> ProviderConfig:
    return load_config(tree / "config.yaml")


@pytest.fixture
def empty_tree(tmp_path: Path) -> Path:
    """A provider config with an empty tenants folder."""
    root = tmp_path / "empty"
    (root / "tenants").mkdir(parents=True)
    (root / "config.yaml").write_text(CONFIG_TEXT)
    return root


@pytest.fixture
def write_tenant(empty_tree: Path) -> Callable[[str, str | bytes], Path]:
    """Write one tenant file into ``empty_tree`` and return its path."""

    def write(name: str, content: str | bytes) -> Path:
        path = empty_tree / "tenants" / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    return write


@pytest.fixture
def app(config: ProviderConfig) -> Flask:
    compile_snapshot(config)
    return create_app(snapshot_path=config.snapshot_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
