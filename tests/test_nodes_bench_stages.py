"""bench/nodes_bench.py's breakdown of one `apply --debug` log into stages
(the figures docs/performance.md quotes): each stage from the timestamps of
the log lines that end it, the last node's line where two nodes log."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from types import ModuleType

import pytest
from support.layout import ROOT

LOG = """\
2026-12-03 13:22:57,761 INFO policy_host.publish.apply: apply: step validate done
2026-12-03 13:22:57,983 INFO policy_host.publish.apply: apply: step verify done
2026-12-03 13:22:58,900 INFO policy_host.nodes.push: node b (root@10.77.2.2): \
Number of regular files transferred: 3
2026-12-03 13:22:59,084 INFO policy_host.nodes.push: node a (root@10.77.1.2): \
Number of regular files transferred: 3
2026-12-03 13:22:59,841 INFO policy_host.nodes.push: node b (root@10.77.2.2): now serves release r1
2026-12-03 13:23:00,064 INFO policy_host.nodes.push: node a (root@10.77.1.2): now serves release r2
2026-12-03 13:23:00,174 DEBUG policy_host.runner: running something
2026-12-03 13:23:00,180 INFO policy_host.publish.apply: apply: step nodes done
2026-12-03 13:23:00,187 INFO policy_host.publish.apply: apply: step publish done
2026-12-03 13:23:00,195 INFO policy_host.publish.propagation: primary 127.0.0.1:5300 has \
the change (serial 3) after 0.01 s
2026-12-03 13:23:01,215 INFO policy_host.publish.propagation: ns2.provider.example \
(127.0.0.3:53) has the change (serial 3) after 1.03 s
2026-12-03 13:23:01,216 INFO policy_host.publish.apply: apply: step confirm done
"""


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "bench" / "nodes_bench.py"
    spec = importlib.util.spec_from_file_location("nodes_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("nodes_bench", module)
    spec.loader.exec_module(module)
    return module


def at(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_each_stage_ends_at_the_log_line_that_closes_it(bench: ModuleType) -> None:
    start = at("2026-12-03 13:22:57,000")
    end = at("2026-12-03 13:23:01,300")
    got = bench.stages(start, end, LOG)
    want = {
        "start-up": 0.761,
        "serve": 0.222,
        "rsync": 1.101,  # node a's rsync, the later one
        "activate": 0.980,
        "node fetch": 0.116,
        "update": 0.007,
        "propagation": 1.028,
        "to secondary": 4.215,
        "command": 4.300,
    }
    assert list(got) == list(bench.STAGES)
    assert got == pytest.approx(want, abs=1e-6)


def test_a_run_without_the_secondary_line_is_an_error(bench: ModuleType) -> None:
    cut = LOG[: LOG.index("2026-12-03 13:23:01,215")]
    with pytest.raises(bench.BenchError, match="ns2"):
        bench.stages(0.0, 1.0, cut)


def test_the_summary_gives_median_min_and_max(bench: ModuleType) -> None:
    runs = [{stage: float(n) for stage in bench.STAGES} for n in (3, 1, 2)]
    figures = bench.summary(runs)
    assert figures["command"] == {"median": 2.0, "min": 1.0, "max": 3.0}
