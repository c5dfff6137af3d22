"""What the failover scenario files share: the voxnode pair in a fresh namespace lab, and
the checks every scenario makes (lab/pair/harness.py, lab/pair/voxnode.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from lab.pair.harness import PairLab
from lab.pair.topology import missing_tools
from lab.pair.voxnode import VoxnodePair


def lab_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = missing_tools()
    if missing:
        pytest.skip(f"host tools missing: {', '.join(missing)}")


@contextlib.contextmanager
def voxnode_pair(**options: Any) -> Iterator[VoxnodePair]:
    """Two agents in a fresh lab; at the end, neither may have stalled its event loop."""
    lab_or_skip()
    with PairLab(assign_node_addresses=False, probe=options.pop("probe", True)) as lab:
        voxnode = VoxnodePair(lab, **options)
        try:
            yield voxnode
        finally:
            voxnode.stop()
        problems = voxnode.loop_problems()
        assert problems == [], "\n".join(problems)


def start(pair: VoxnodePair) -> str:
    master = pair.start(stagger_s=0.3)
    pair.lab.wait_steady(master, for_s=0.3)
    return master


def codes(reasons: list[dict[str, str]]) -> list[str]:
    return [r["code"] for r in reasons]


def assert_never_both(pair: VoxnodePair, since: float = 0.0) -> None:
    both = pair.lab.both_held_samples(since)
    assert both == [], f"both nodes held the node IP at {len(both)} samples"
