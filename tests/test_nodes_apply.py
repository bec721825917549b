"""`apply`'s rule across serving nodes (``publish.nodes``), its loop alone:
push to every node that is not drained, then publish nothing until each
serves the new bytes and holds the control node's snapshot. The nodes here
are stand-ins recording what was asked; ``test_nodes_netns.py`` runs real
ones."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from conftest import CONFIG_TEXT

from policy_host.errors import PolicyHostError
from policy_host.nodes.push import PushError
from policy_host.publish.nodes import NodeOps, dry_run_note, push_and_verify
from policy_host.publish.nodeview import NodeView
from policy_host.publish.steps import NODES, ApplyError
from policy_host.read.config import ProviderConfig, load_config
from policy_host.read.nodes import Node

NEW = b"version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n"
OLD = b"version: STSv1\r\nmode: none\r\nmax_age: 3600\r\n"
SNAPSHOT = "s2"


def node(name: str, *, drained: bool = False) -> Node:
    return Node(name, ("192.0.2.1", 443), f"root@{name}", "192.0.2.1:8080", drained=drained)


@pytest.fixture
def config(tmp_path: Path) -> ProviderConfig:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_TEXT)
    loaded = load_config(path)
    nodes = dataclasses.replace(
        loaded.nodes, serving=(node("a"), node("b"), node("c", drained=True))
    )
    return dataclasses.replace(
        loaded, nodes=nodes, apply=dataclasses.replace(loaded.apply, verify_timeout=1.0)
    )


class FakeNodes:
    """Nodes that take a push (or refuse it) and serve what they were told."""

    def __init__(self, *, refuse: Sequence[str] = (), lag: Mapping[str, int] | None = None):
        self.refuse = set(refuse)
        # Polls before a node serves the new set (-1: never).
        self.lag = dict(lag or {})
        self.pushed: list[str] = []
        self.asked: list[str] = []

    def _current(self, target: Node) -> bool:
        left = self.lag.get(target.name, 0)
        if left > 0:
            self.lag[target.name] = left - 1
        return left == 0

    def ops(self) -> NodeOps:
        def push(nodes: Sequence[Node], snapshot: str) -> Mapping[str, str | PolicyHostError]:
            self.pushed += [n.name for n in nodes]
            return {
                n.name: PushError(f"node {n.name} ({n.ssh}): rsync failed (status 255)")
                if n.name in self.refuse
                else f"release-{snapshot}"
                for n in nodes
            }

        def fetch(target: Node, host: str) -> tuple[int, bytes]:
            self.asked.append(target.name)
            return 200, NEW if self._current(target) else OLD

        def view(target: Node, want: str | None) -> NodeView:
            return NodeView(target, want, None)

        return NodeOps(push=push, fetch=fetch, view=view, snapshot=lambda: SNAPSHOT)


def test_every_node_not_drained_is_pushed_and_serves_the_new_bytes(config: ProviderConfig) -> None:
    fake = FakeNodes(lag={"b": 3})
    push_and_verify(config, fake.ops(), {"a.example": NEW}, ["a.example"], sleep=time.sleep)
    assert sorted(fake.pushed) == ["a", "b"]
    assert "c" not in fake.asked
    # b was asked until it served the new bytes.
    assert fake.asked.count("b") == 4


def test_a_node_that_takes_no_push_stops_the_run_naming_it(config: ProviderConfig) -> None:
    fake = FakeNodes(refuse=["b"])
    with pytest.raises(ApplyError) as caught:
        push_and_verify(config, fake.ops(), {"a.example": NEW}, ["a.example"], sleep=time.sleep)
    assert caught.value.step == NODES
    assert "node b (root@b): rsync failed" in caught.value.reason
    assert "nothing was published" in caught.value.reason
    assert fake.asked == []


def test_a_node_that_never_serves_the_new_bytes_stops_the_run(config: ProviderConfig) -> None:
    fake = FakeNodes(lag={"a": -1})
    started = time.monotonic()
    with pytest.raises(ApplyError) as caught:
        push_and_verify(config, fake.ops(), {"a.example": NEW}, ["a.example"], sleep=time.sleep)
    assert 1.0 <= time.monotonic() - started < 3.0
    assert caught.value.domains == ["a.example"]
    assert "node a (https://192.0.2.1:443) still serves other bytes for a.example" in str(
        caught.value
    )


def test_a_node_whose_workers_hold_another_snapshot_stops_the_run(
    config: ProviderConfig,
) -> None:
    fake = FakeNodes()
    ops = dataclasses.replace(
        fake.ops(), view=lambda target, want: NodeView(target, "s1", "worker 7 serves s1")
    )
    with pytest.raises(ApplyError) as caught:
        push_and_verify(config, ops, {}, ["a.example"], sleep=time.sleep)
    assert "node a: worker 7 serves s1" in caught.value.reason


def test_without_nodes_nothing_is_pushed(config: ProviderConfig) -> None:
    alone = dataclasses.replace(config, nodes=dataclasses.replace(config.nodes, serving=()))
    fake = FakeNodes(refuse=["a", "b"])
    push_and_verify(alone, fake.ops(), {"a.example": NEW}, ["a.example"], sleep=time.sleep)
    assert fake.pushed == []


def test_a_dry_run_names_the_nodes_it_would_push_to(config: ProviderConfig) -> None:
    assert dry_run_note(config) == (
        "would push to the serving nodes and verify each: a, b; drained, skipped: c"
    )
