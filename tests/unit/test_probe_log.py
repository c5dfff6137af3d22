"""The failover lab's bookkeeping (lab/pair/probes.py): the steadiness rule the namespace tests
wait on, checked on written logs at clock values a long-running machine has, and the
bracketing of node-IP reads that tells a real overlap from a handover between two reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.pair.probes import ProbeLog, VipRead, bracket


def write_log(path: Path, rows: list[tuple[float, str]]) -> ProbeLog:
    path.write_text("".join(f"{seq} {t - 0.0002:.6f} {t:.6f} {node}\n"
                            for seq, (t, node) in enumerate(rows)))
    return ProbeLog(path)


@pytest.mark.parametrize("base", [12.5, 9833.678971, 10165.931921, 86400.0 * 40 + 0.3])
def test_replies_every_10_ms_are_steady_at_any_clock_value(tmp_path: Path, base: float) -> None:
    log = write_log(tmp_path / "probe.log", [(base + i * 0.01, "a") for i in range(101)])
    now = base + 1.0
    assert log.steady_from("a", 0.0, for_s=0.3, now=now)
    assert not log.steady_from("b", 0.0, for_s=0.3, now=now)


def test_a_gap_over_100_ms_is_not_steady(tmp_path: Path) -> None:
    base = 10000.0
    rows = [(base + i * 0.01, "a") for i in range(50)]
    rows += [(base + 0.49 + 0.15 + i * 0.01, "a") for i in range(20)]
    log = write_log(tmp_path / "probe.log", rows)
    assert not log.steady_from("a", 0.0, for_s=0.3, now=base + 0.8)
    assert log.steady_from("a", 0.0, for_s=0.1, now=base + 0.8)


def test_the_window_must_not_start_before_since(tmp_path: Path) -> None:
    base = 10000.0
    log = write_log(tmp_path / "probe.log", [(base + i * 0.01, "a") for i in range(101)])
    assert not log.steady_from("a", base + 0.9, for_s=0.3, now=base + 1.0)
    assert log.steady_from("a", base + 0.5, for_s=0.3, now=base + 1.0)


def test_replies_from_both_nodes_are_not_steady(tmp_path: Path) -> None:
    base = 10000.0
    rows = [(base + i * 0.01, "a" if i != 90 else "b") for i in range(101)]
    log = write_log(tmp_path / "probe.log", rows)
    assert not log.steady_from("a", 0.0, for_s=0.3, now=base + 1.0)
    assert "a: 100, b: 1" in log.describe(base, base + 1.0)


def test_the_reply_after_now_is_ignored_and_a_trailing_gap_counts(tmp_path: Path) -> None:
    base = 10000.0
    log = write_log(tmp_path / "probe.log", [(base + i * 0.01, "a") for i in range(50)])
    assert not log.steady_from("a", 0.0, for_s=0.3, now=base + 0.8)  # silent for 310 ms
    assert "longest gap 310 ms" in log.describe(base + 0.3, base + 0.8)


def test_a_handover_between_two_reads_is_not_both_holding() -> None:
    # a read at 0.00 (holds), a releases, b takes, b read at 0.01 (holds), a read at 0.02
    reads = [VipRead("a", True, 0.0), VipRead("b", True, 0.01), VipRead("a", False, 0.02)]
    sample = bracket(reads)
    assert sample is not None
    assert sample.at == 0.01 and sample.held == {"a": False, "b": True}


def test_a_real_overlap_is_both_holding() -> None:
    reads = [VipRead("b", True, 0.0), VipRead("a", True, 0.01), VipRead("b", True, 0.02)]
    sample = bracket(reads)
    assert sample is not None and sample.held == {"a": True, "b": True}


@pytest.mark.parametrize("reads", [
    [VipRead("a", True, 0.0), VipRead("b", True, 0.01)],
    [VipRead("a", True, 0.0), VipRead("a", True, 0.01), VipRead("a", True, 0.02)],
    [VipRead("a", True, 0.0), VipRead("b", True, 0.01), VipRead("b", True, 0.02)],
])
def test_no_sample_without_a_bracket(reads: list[VipRead]) -> None:
    assert bracket(reads) is None
