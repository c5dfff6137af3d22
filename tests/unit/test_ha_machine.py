"""The pair's pure role decisions: every rule, table-driven, with a fake clock."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from agent.state.model import HAProfile
from ha.machine import (
    PEER_LOST,
    TIMINGS,
    WITNESS_LOST,
    Inputs,
    PeerView,
    Reason,
    decide,
    later,
    next_change,
    wins_election,
)
from ha.protocol import Role

T = TIMINGS[HAProfile.STANDARD]
NOW = 100.0


def peer(role: Role, *, age: float = 0.05, epoch: int = 3, released: bool = False,
         witness_ok: bool = True, node_id: str = "10.0.0.12") -> PeerView:
    return PeerView(node_id, role, epoch, role is Role.MASTER, witness_ok, NOW - age,
                    NOW - age if released else None)


def inputs(role: Role, p: PeerView | None, *, witness_age: float = 0.01, epoch: int = 3,
           started: float = 0.0, cloud: bool = False, foreign: bool = False) -> Inputs:
    return Inputs(now=NOW, started=started, role=role, epoch=epoch, node_id="10.0.0.11",
                  peer=p, witness_age=witness_age, vip_foreign_holder=foreign, cloud=cloud,
                  timing=T)


def test_election_is_deterministic_and_antisymmetric() -> None:
    assert wins_election(4, "10.0.0.12", 3, "10.0.0.11")
    assert wins_election(3, "10.0.0.9", 3, "10.0.0.11")  # numeric, not text, order
    assert not wins_election(3, "10.0.0.11", 3, "10.0.0.9")
    for a, b in [((1, "10.0.0.1"), (1, "10.0.0.2")), ((2, "10.0.0.2"), (1, "10.0.0.1"))]:
        assert wins_election(*a, *b) != wins_election(*b, *a)


CASES = [
    # (name, inputs, expected role or None, reason fragment)
    ("init hears a master: slave", inputs(Role.INIT, peer(Role.MASTER), started=NOW),
     Role.SLAVE, "no preemption"),
    ("init sees the node IP held", inputs(Role.INIT, None, started=NOW, foreign=True),
     Role.SLAVE, "another device holds the node IP"),
    ("init waits before deciding", inputs(Role.INIT, None, started=NOW - 0.5), None,
     "listening"),
    ("init alone with a witness: first node",
     inputs(Role.INIT, None), Role.MASTER, "first node of the pair"),
    ("init alone without witness", inputs(Role.INIT, None, witness_age=math.inf),
     Role.SLAVE, "neither the peer nor a witness"),
    ("init with an init peer it beats",
     inputs(Role.INIT, peer(Role.INIT, epoch=2)), Role.MASTER, "elected over 10.0.0.12"),
    ("init with an init peer that wins",
     inputs(Role.INIT, peer(Role.INIT, epoch=5)), Role.SLAVE, "10.0.0.12 is elected"),
    ("init in a cloud pair without peer", inputs(Role.INIT, None, cloud=True),
     Role.SLAVE, "waits for the operator"),
    ("slave follows a live master", inputs(Role.SLAVE, peer(Role.MASTER)), None,
     "following the master"),
    ("slave takes over a silent master with a witness",
     inputs(Role.SLAVE, peer(Role.MASTER, age=0.7)), Role.MASTER,
     "master unreachable (silent for 0.7 s) and a witness answers"),
    ("slave without witness does not take over",
     inputs(Role.SLAVE, peer(Role.MASTER, age=0.7), witness_age=0.9), None,
     "no witness answers"),
    ("slave just under the dead interval waits",
     inputs(Role.SLAVE, peer(Role.MASTER, age=T.dead - 0.05)), None, "following the master"),
    ("slave takes the release at once", inputs(Role.SLAVE, peer(Role.SLAVE, released=True)),
     Role.MASTER, "handed the node IP over"),
    ("slave in a cloud pair never takes over",
     inputs(Role.SLAVE, peer(Role.MASTER, age=5), cloud=True), None, "manual"),
    ("slave with an off peer", inputs(Role.SLAVE, peer(Role.OFF)), Role.MASTER,
     "is off"),
    ("master keeps serving", inputs(Role.MASTER, peer(Role.SLAVE)), None, "serving"),
    ("master alone with a witness keeps serving",
     inputs(Role.MASTER, peer(Role.SLAVE, age=10)), None, "serving"),
    ("isolated master lets go",
     inputs(Role.MASTER, peer(Role.SLAVE, age=T.guard + 0.05), witness_age=T.guard + 0.05),
     Role.SLAVE,
     "isolated"),
    ("master that only lost the witness stays",
     inputs(Role.MASTER, peer(Role.SLAVE), witness_age=math.inf), None, "serving"),
    ("two masters: the higher epoch stays",
     inputs(Role.MASTER, peer(Role.MASTER, epoch=2), epoch=3), None, "serving"),
    ("two masters: the lower epoch demotes",
     inputs(Role.MASTER, peer(Role.MASTER, epoch=4), epoch=3), Role.SLAVE,
     "diverged"),
    ("off stays off", inputs(Role.OFF, None), None, "off by the operator"),
]


@pytest.mark.parametrize(("name", "given", "target", "reason"), CASES, ids=[c[0] for c in CASES])
def test_decisions(name: str, given: Inputs, target: Role | None, reason: str) -> None:
    decision = decide(given)
    assert decision.target is target
    assert reason in decision.reason
    assert decision.bump_epoch == (target is Role.MASTER)


def test_isolated_master_lets_go_before_the_slave_takes_over() -> None:
    # the master's guard (peer and witnesses silent) expires before the slave's dead interval
    assert T.guard < T.dead
    for profile in HAProfile:
        timing = TIMINGS[profile]
        assert timing.guard < timing.dead
        # the slave's earliest takeover (dead - interval after the master's link went)
        # comes at least 40 ms after the isolated master's latest release (guard)
        assert timing.dead - timing.interval - timing.guard >= 0.04
        # a witness counts as reachable for at least two probe periods (one lost answer is
        # not a loss), and less than the guard: a master that let go for lack of witnesses
        # does not count the answer from before as reachable
        assert 2 * timing.witness_interval <= timing.witness_within < timing.guard


def test_blockers_are_operator_sentences() -> None:
    slave = decide(inputs(Role.SLAVE, peer(Role.MASTER, age=3), witness_age=math.inf))
    assert slave.blockers == (WITNESS_LOST, PEER_LOST)
    master = decide(inputs(Role.MASTER, None))
    assert master.blockers == (PEER_LOST,)
    fine = decide(inputs(Role.MASTER, peer(Role.SLAVE)))
    assert fine.blockers == ()
    no_witness_peer = decide(inputs(Role.MASTER, replace(peer(Role.SLAVE), witness_ok=False)))
    assert [b.code for b in no_witness_peer.blockers] == ["peer-no-witness"]
    assert no_witness_peer.blockers[0].text == "The peer cannot reach a witness"
    assert all(b.code and b.text for b in slave.blockers)


def test_a_failed_promotion_holds_off_and_says_why() -> None:
    held = Reason("state-unsaved", "the pair's state cannot be saved (No space left on device)")
    given = replace(inputs(Role.SLAVE, peer(Role.MASTER, age=3)), promote_after=NOW + 5,
                    promote_held=held)
    decision = decide(given)
    assert decision.target is None and "not promoting yet" in decision.reason
    assert held in decision.blockers
    assert next_change(given) <= NOW + 5
    after = replace(given, now=NOW + 5.001)  # the witness still answering then
    assert decide(after).target is Role.MASTER
    assert held not in decide(after).blockers


def lease_inputs(role: Role, p: PeerView | None, *, lease_left: float | None,
                 arbiter_age: float = 0.01) -> Inputs:
    return replace(inputs(role, p), arbiter=True, arbiter_age=arbiter_age,
                   lease_until=NOW + lease_left if lease_left is not None else -math.inf)


def test_with_an_arbiter_a_slave_takes_over_only_with_the_lease() -> None:
    silent = peer(Role.MASTER, age=T.dead + 0.1)
    without = decide(lease_inputs(Role.SLAVE, silent, lease_left=None))
    assert without.target is None and "lease" in without.reason
    assert decide(lease_inputs(Role.SLAVE, silent, lease_left=0.4)).target is Role.MASTER
    # a lease about to end is not enough (the margin is the old master's release point)
    assert decide(lease_inputs(Role.SLAVE, silent, lease_left=T.lease_margin / 2)).target is None


def test_with_an_arbiter_a_master_without_peer_lets_go_before_its_lease_ends() -> None:
    lost = peer(Role.SLAVE, age=T.dead + 0.05)
    keeps = lease_inputs(Role.MASTER, lost, lease_left=0.3)
    assert decide(keeps).target is None
    # no new lease arrives: it lets go exactly at lease end - margin
    assert next_change(keeps) == pytest.approx(NOW + 0.3 - T.lease_margin)
    assert decide(later(keeps, 0.3 - T.lease_margin + 1e-6)).target is Role.SLAVE
    # while the peer is heard, the lease does not matter
    assert decide(lease_inputs(Role.MASTER, peer(Role.SLAVE), lease_left=None)).target is None


def test_arbiter_unreachable_is_a_blocker_and_moves_nothing() -> None:
    given = lease_inputs(Role.SLAVE, peer(Role.MASTER), lease_left=None, arbiter_age=math.inf)
    decision = decide(given)
    assert decision.target is None
    assert "arbiter-unreachable" in [b.code for b in decision.blockers]
    master = lease_inputs(Role.MASTER, peer(Role.SLAVE), lease_left=None, arbiter_age=math.inf)
    assert decide(master).target is None
    assert "Arbiter unreachable" in [b.text for b in decide(master).blockers]


def test_the_lease_margins_hold_for_every_profile() -> None:
    for profile in HAProfile:
        t = TIMINGS[profile]
        # renewed every heartbeat: one lost answer leaves more than the margin
        assert t.lease - 2 * t.interval > t.lease_margin > 0
        # an arbiter takeover is not slower than a lease plus two periods
        assert t.lease < t.dead + t.interval


def test_a_witness_that_just_came_back_does_not_allow_a_takeover() -> None:
    given = replace(inputs(Role.SLAVE, peer(Role.MASTER, age=3)), witness_streak=0.1)
    decision = decide(given)
    assert decision.target is None
    assert "waiting a dead interval" in decision.reason
    later = replace(given, witness_streak=0.7)
    assert decide(later).target is Role.MASTER


def test_an_answer_from_before_a_link_loss_does_not_count() -> None:
    """A node whose link just went down still remembers the witness's last answer; it
    must be recent (a few probe periods), not merely younger than the dead interval."""
    stale = inputs(Role.SLAVE, peer(Role.MASTER, age=T.dead + 0.05),
                   witness_age=T.witness_within + 0.02)
    assert decide(stale).target is None
    assert T.witness_within <= 3 * T.witness_interval < T.dead


# --- when the answer can change --------------------------------------------------------------


def random_inputs(rng: random.Random) -> Inputs:
    timing = TIMINGS[rng.choice(list(HAProfile))]
    ages = [0.0, 0.01, 0.05, 0.2, 0.29, 0.31, 0.5, 0.59, 0.61, 1.0, 3.0, math.inf]
    p = None if rng.random() < 0.2 else PeerView(
        rng.choice(["10.0.0.10", "10.0.0.12"]), rng.choice(list(Role)), rng.randint(2, 4),
        rng.random() < 0.5, rng.random() < 0.8, NOW - rng.uniform(0.0, 1.2),
        NOW - 0.05 if rng.random() < 0.1 else None)
    witness_age = rng.choice([*ages, rng.uniform(0.0, 1.0)])
    ok = witness_age < timing.witness_within
    return Inputs(
        now=NOW, started=NOW - rng.choice([0.0, 0.5, 1.7, 10.0]),
        role=rng.choice(list(Role)), epoch=3, node_id="10.0.0.11", peer=p,
        witness_age=witness_age, vip_foreign_holder=rng.random() < 0.1,
        cloud=rng.random() < 0.15, timing=timing, hold_off=rng.random() < 0.1,
        witness_streak=rng.uniform(0.0, 1.0) if ok else 0.0,
        promote_after=rng.choice([-math.inf, -math.inf, NOW + 0.3, NOW - 1]),
        promote_held=Reason("state-unsaved", "cannot save"),
        arbiter=(arbiter := rng.random() < 0.3),
        arbiter_age=rng.choice(ages) if arbiter else math.inf,
        lease_until=NOW + rng.choice([-1.0, 0.05, 0.2, 0.4]) if arbiter else -math.inf,
    )


def outcome(i: Inputs) -> tuple[Role | None, bool, tuple[Reason, ...]]:
    decision = decide(i)
    return decision.target, decision.bump_epoch, decision.blockers


def test_nothing_changes_before_next_change_and_it_changes_there() -> None:
    rng = random.Random(4)
    never = 0
    for _ in range(3000):
        i = random_inputs(rng)
        deadline = next_change(i)
        assert deadline > i.now
        horizon = min(deadline, i.now + 5.0) - i.now
        before = outcome(i)
        for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 0.999):
            assert outcome(later(i, horizon * fraction)) == before, (i, deadline, fraction)
        if deadline == math.inf:
            never += 1
        else:
            assert outcome(later(i, horizon + 1e-6)) != before, (i, deadline)
    assert 0 < never < 2000


def test_with_nothing_new_a_master_next_decides_when_it_would_be_isolated() -> None:
    i = inputs(Role.MASTER, peer(Role.SLAVE, age=0.05), witness_age=0.02)
    assert next_change(i) == pytest.approx(NOW - 0.02 + T.guard)  # both silent >= guard
    assert decide(later(i, T.guard)).target is Role.SLAVE


def test_a_slave_decides_the_takeover_exactly_at_the_dead_interval() -> None:
    # the master went silent 0.2 s ago; the witness answers all the time
    i = replace(inputs(Role.SLAVE, peer(Role.MASTER, age=0.2), witness_age=0.0),
                witness_streak=5.0)
    times = []
    while decide(i).target is None and len(times) < 10:
        deadline = next_change(i)
        times.append(round(deadline - (NOW - 0.2), 6))
        # the runtime wakes a hair after the deadline (a threshold at exactly ``now`` may
        # round either way)
        dt = deadline - i.now + 1e-6
        i = replace(i, now=i.now + dt, witness_streak=i.witness_streak + dt)
    assert decide(i).target is Role.MASTER
    assert times[-1] == T.dead  # decided at the threshold, not a tick later


def test_a_peer_on_a_slower_profile_is_given_its_own_dead_interval() -> None:
    """The nodes change profile one after the other: a fast slave whose master still runs
    the standard profile (a heartbeat every 150 ms) does not take its silence for a loss."""
    fast = TIMINGS[HAProfile.FAST]
    slow_master = replace(peer(Role.MASTER, age=0.3), dead=T.dead)
    given = replace(inputs(Role.SLAVE, slow_master), timing=fast, witness_streak=5.0)
    assert decide(given).target is None
    assert decide(replace(given, peer=replace(slow_master, dead=0.0))).target is Role.MASTER
    lost = replace(given, peer=replace(slow_master, last_seen=NOW - T.dead - 0.01))
    assert decide(lost).target is Role.MASTER


# --- the database's word: no takeover on the rules alone when data may be lost ---------------


def test_a_master_whose_replication_was_asynchronous_is_not_taken_over_on_its_own() -> None:
    from ha.replication.database import DatabaseReplication

    master = replace(peer(Role.MASTER, age=3), db="0-11-90", db_sync="async")
    risk = DatabaseReplication.risk(master)
    assert risk is not None and risk.code == "replication-async"
    assert "after 0-11-90 may be missing" in risk.text
    given = replace(inputs(Role.SLAVE, master), data_risk=risk)
    decision = decide(given)
    assert decision.target is None
    assert "fell back to asynchronous" in decision.reason
    assert decision.reason.endswith("not taking over on its own")
    assert "--force" in decision.reason
    assert risk in decision.blockers
    # with the master's replication semi-synchronous, the same silence is a takeover
    semi = replace(master, db_sync="semi")
    assert DatabaseReplication.risk(semi) is None
    assert decide(replace(given, peer=semi, data_risk=None)).target is Role.MASTER
    # a switchover's release is the master's own word: no risk (it froze first)
    released = replace(peer(Role.SLAVE, released=True), db="0-11-90", db_sync="frozen")
    assert DatabaseReplication.risk(released) is None
    assert decide(inputs(Role.SLAVE, released)).target is Role.MASTER


def test_a_switchover_needs_a_replicating_peer() -> None:
    from ha.replication.database import DatabaseReplication

    assert DatabaseReplication.switchover_blocker(
        replace(peer(Role.SLAVE), db="0-11-5", db_sync="replica")) is None
    for state in ("", "frozen", "async"):
        text = DatabaseReplication.switchover_blocker(replace(peer(Role.SLAVE), db_sync=state))
        assert text is not None and "could lose transactions" in text
    assert DatabaseReplication.switchover_blocker(None) is not None
