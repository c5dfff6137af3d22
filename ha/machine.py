"""The pair's role decisions as a pure function: what this node should be, and why.

No I/O and no clock of its own: ``decide`` takes a snapshot of what the node knows (its role
and epoch, the peer's last authentic heartbeat and when it came, whether a witness answers)
and returns the role to move to with an operator sentence, plus the reasons a failover
would be impossible right now. ``next_change`` says when that answer could change if
nothing new arrives, so the runtime (``ha.runtime``) decides exactly then, and at once
whenever an input changes, instead of polling.

Safety rules (architecture: split brain is the failure that matters most):
- a slave promotes itself only when the master has been silent on every heartbeat channel
  for the dead interval **and** a witness answers; never in a cloud pair;
- a master that hears neither the peer nor any witness releases the node IP (fail closed);
- two masters that meet keep the one with the higher epoch, then the lower node id;
- a node that starts and hears a master, or sees the node IP held, becomes slave (no
  preemption); two nodes starting together elect one deterministically;
- with an arbiter (``ha.arbiter``), a node that cannot hear its peer takes over only while
  it holds the arbiter's lease, and a master that hears neither the peer nor the arbiter
  lets go ``lease_margin`` before its lease ends. The lease a node holds is counted from
  the moment it *sent* the request that got it, and the arbiter counts the same lease from
  the moment it *received* it, so the node's view ends first; the arbiter grants the
  other node a lease only after its own view ended, so the node IP has been released at
  least ``lease_margin`` before the other node can hold a lease, whatever the delays.
  This is what arbitrates a cut between just the two nodes, where both still reach the
  gateway witness;
- a failed promotion (the state file cannot be written, the kernel refuses the node IP)
  ends released and holds off for a while (``promote_after``): no take/release loop.

Blockers (why a failover is impossible now) are ``Reason`` values: a stable code and an
operator sentence.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from agent.state.model import HAProfile
from ha.protocol import Role


@dataclass(frozen=True)
class Timing:
    interval: float  # heartbeat period (s)
    dead: float  # peer silent this long on every channel: a slave may take over
    guard: float  # peer and every witness silent this long: a master lets go (< dead, so an
    #               isolated master has released the node IP before the slave takes it)
    witness_interval: float  # witness probe period
    witness_within: float  # a witness counts as reachable if it answered this recently:
    #                        a few probe periods, far below ``dead`` (a node whose link just
    #                        went down must not count an answer from before as reachable)
    init_wait: float  # listen this long at start before deciding
    lease: float  # how long the arbiter's lease lasts from the request that got it
    lease_margin: float  # a master without the peer lets go this long before its lease
    #                      ends (the arbiter grants the next lease only after the end)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v * 1000) for k, v in self.__dict__.items()}


TIMINGS = {
    # standard: a takeover needs 3 heartbeat periods and more with neither copy (UDP,
    # Ethernet) arriving: with 5 % loss per packet that is ~(0.05**2)**3 = 2e-8 per window.
    # An isolated master lets go at ``guard``: at the latest 350 ms after its link went,
    # while the slave, whose last heartbeat is at most one period older, takes over 400 ms
    # after at the earliest (dead - interval): 50 ms for the release, which a demotion on a
    # fault does first (ha.manager). A link blip shorter than guard - interval (200 ms)
    # releases nothing. A witness counts as reachable for two probe periods and a bit (one lost
    # answer changes nothing), less than ``guard``. 150 ms heartbeats keep an idle agent
    # under 1 % of a core (bench/README.md).
    # With an arbiter, leases are renewed every heartbeat and last 450 ms from the request:
    # one lost answer leaves 150 ms, over the 100 ms margin, so it releases nothing.
    HAProfile.STANDARD: Timing(0.15, 0.55, 0.35, 0.15, 0.32, 1.8, 0.45, 0.1),
    # fast: the same rules on a 30 ms heartbeat, for LANs that carry it (isolated master
    # gone at 75 ms, slave at 120 ms at the earliest)
    HAProfile.FAST: Timing(0.03, 0.15, 0.075, 0.03, 0.065, 0.6, 0.12, 0.035),
}


@dataclass(frozen=True)
class Reason:
    """Why failover is impossible now, or what is wrong with the pair: a stable code for
    programs (tests, the web console) and a sentence for operators."""

    code: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text}


@dataclass(frozen=True)
class PeerView:
    node_id: str
    role: Role
    epoch: int
    holds_vip: bool
    witness_ok: bool
    last_seen: float  # local monotonic time of the last authentic message
    released_at: float | None = None  # when it announced a graceful release
    dead: float = 0.0  # the peer's own dead interval (its profile may be slower than ours)
    db: str = ""  # its database position while master (or frozen at, handing over)
    db_sync: str = ""  # "semi", "async", "frozen", "replica" or "" (no database)
    db_fork: str = ""  # a master's position when it opened for writes


@dataclass(frozen=True)
class Inputs:
    now: float
    started: float
    role: Role
    epoch: int
    node_id: str
    peer: PeerView | None
    witness_age: float  # seconds since a witness last answered (inf: never)
    vip_foreign_holder: bool
    cloud: bool
    timing: Timing
    hold_off: bool = False  # just handed the node IP over: no election win for a while
    witness_streak: float = float("inf")  # how long a witness has answered without a break
    # after a promotion failed (a state write, the kernel refusing the node IP): no new
    # attempt before this time, and why
    promote_after: float = float("-inf")
    promote_held: Reason | None = None
    arbiter: bool = False  # an arbiter is configured: a takeover needs its lease
    arbiter_age: float = float("inf")  # since the arbiter last answered
    lease_until: float = float("-inf")  # when this node's lease ends (local monotonic)
    # the master's last word says a takeover may lose acknowledged data (its database
    # replication fell back to asynchronous): no takeover on the rules alone
    data_risk: Reason | None = None


@dataclass(frozen=True)
class Decision:
    target: Role | None  # None: stay where we are
    reason: str
    blockers: tuple[Reason, ...] = ()
    bump_epoch: bool = False


def witness_ok(i: Inputs) -> bool:
    return i.witness_age < i.timing.witness_within


def arbiter_ok(i: Inputs) -> bool:
    return i.arbiter_age < i.timing.witness_within


def holds_lease(i: Inputs) -> bool:
    """A lease that still runs for more than the margin (the master's release point)."""
    return i.lease_until - i.now > i.timing.lease_margin


PEER_LOST = Reason("peer-unreachable", "Peer unreachable on the heartbeat link")
WITNESS_LOST = Reason("witness-unreachable", "Witness unreachable")
ARBITER_LOST = Reason("arbiter-unreachable", "Arbiter unreachable")
CLOUD_MANUAL = Reason("cloud-manual",
                      "Pure Cloud pair: failover is manual (System Monitor STATE)")
PEER_OFF = Reason("peer-off", "The peer is off (services off)")
PEER_NO_WITNESS = Reason("peer-no-witness", "The peer cannot reach a witness")
SELF_OFF = Reason("self-off", "This node is off (services off)")


def wins_election(epoch: int, node_id: str, other_epoch: int, other_id: str) -> bool:
    """Higher epoch wins; on a tie the lower address wins (both sides compute the same)."""
    if epoch != other_epoch:
        return epoch > other_epoch
    return _order(node_id) < _order(other_id)


def _order(node_id: str) -> tuple[int, int | str]:
    try:
        return (0, int(ipaddress.ip_address(node_id)))
    except ValueError:
        return (1, node_id)


def peer_dead_after(i: Inputs) -> float:
    """How long the peer may be silent before it counts as lost: our dead interval, or its
    own if it runs a slower profile (the two nodes are reconfigured one after the other)."""
    return max(i.timing.dead, i.peer.dead) if i.peer is not None else i.timing.dead


def peer_alive(i: Inputs) -> bool:
    return i.peer is not None and i.now - i.peer.last_seen < peer_dead_after(i)


def blockers(i: Inputs) -> tuple[Reason, ...]:
    """Why a failover could not happen now (status shows them)."""
    found: list[Reason] = []
    if i.cloud:
        found.append(CLOUD_MANUAL)
    if i.role is Role.OFF:
        found.append(SELF_OFF)
    if i.role is Role.MASTER:
        if not peer_alive(i):
            found.append(PEER_LOST)
        elif i.peer is not None and i.peer.role is Role.OFF:
            found.append(PEER_OFF)
        elif i.peer is not None and not i.peer.witness_ok:
            found.append(PEER_NO_WITNESS)
    elif not witness_ok(i):
        found.append(WITNESS_LOST)
    if i.role is not Role.MASTER and not peer_alive(i) and i.role is not Role.OFF:
        found.append(PEER_LOST)
    if i.arbiter and not arbiter_ok(i):
        found.append(ARBITER_LOST)
    if i.promote_held is not None and i.now < i.promote_after and i.role is not Role.MASTER:
        found.append(i.promote_held)
    if i.data_risk is not None and i.role is not Role.MASTER:
        found.append(i.data_risk)
    return tuple(dict.fromkeys(found))


def decide(i: Inputs) -> Decision:
    stuck = blockers(i)
    if i.role is Role.OFF:
        return Decision(None, "off by the operator", stuck)
    if i.role is Role.MASTER:
        return _decide_master(i, stuck)
    decision = _decide_init(i, stuck) if i.role is Role.INIT else _decide_slave(i, stuck)
    if decision.target is Role.MASTER and i.now < i.promote_after:
        held = i.promote_held.text if i.promote_held is not None else "holding off"
        return Decision(None, f"{decision.reason}, but not promoting yet: {held}", stuck)
    return decision


def _decide_init(i: Inputs, stuck: tuple[Reason, ...]) -> Decision:
    peer = i.peer if peer_alive(i) else None
    if peer is not None and peer.role is Role.MASTER:
        return Decision(Role.SLAVE, f"the peer {peer.node_id} is master (no preemption)", stuck)
    if i.vip_foreign_holder:
        return Decision(Role.SLAVE, "another device holds the node IP (no preemption)", stuck)
    if i.now - i.started < i.timing.init_wait:
        return Decision(None, "listening for the peer", stuck)
    if peer is not None:
        if wins_election(i.epoch, i.node_id, peer.epoch, peer.node_id) or peer.role is Role.OFF:
            return Decision(
                Role.MASTER,
                f"no master in the pair; elected over {peer.node_id} "
                f"(epoch {i.epoch} vs {peer.epoch})",
                stuck, bump_epoch=True,
            )
        return Decision(Role.SLAVE, f"no master in the pair; {peer.node_id} is elected", stuck)
    if i.cloud:
        return Decision(Role.SLAVE, "no peer heard; a Pure Cloud node waits for the operator",
                        stuck)
    if witness_ok(i) and i.arbiter and not holds_lease(i):
        return Decision(Role.SLAVE, "no peer heard, but the arbiter's lease is not ours: not "
                        "taking the node IP", stuck)
    if witness_ok(i):
        return Decision(Role.MASTER, "no peer heard and a witness answers: first node of the "
                        "pair", stuck, bump_epoch=True)
    return Decision(Role.SLAVE, "neither the peer nor a witness answers: not taking the node "
                    "IP", stuck)


def _decide_slave(i: Inputs, stuck: tuple[Reason, ...]) -> Decision:
    peer = i.peer
    if peer is not None and peer.released_at is not None and not i.cloud:
        return Decision(Role.MASTER, f"{peer.node_id} handed the node IP over (switchover)",
                        stuck, bump_epoch=True)
    if peer_alive(i) and peer is not None:
        if peer.role is Role.MASTER:
            return Decision(None, "following the master", stuck)
        if i.cloud:
            return Decision(None, "Pure Cloud pair: waiting for the operator", stuck)
        if i.hold_off:
            return Decision(None, "handed the node IP over; waiting for the peer to take it",
                            stuck)
        if peer.role is Role.OFF and witness_ok(i):
            return Decision(Role.MASTER, f"the peer {peer.node_id} is off", stuck,
                            bump_epoch=True)
        if peer.role in (Role.SLAVE, Role.INIT) and wins_election(
            i.epoch, i.node_id, peer.epoch, peer.node_id
        ):
            return Decision(Role.MASTER, f"no master in the pair; elected over {peer.node_id}",
                            stuck, bump_epoch=True)
        return Decision(None, "no master yet; the peer is elected", stuck)
    if i.cloud:
        return Decision(None, "the peer is unreachable; Pure Cloud failover is manual", stuck)
    silent = "never heard" if peer is None else f"silent for {i.now - peer.last_seen:.1f} s"
    if witness_ok(i) and i.witness_streak < i.timing.dead:
        # the witness just came back (this node was the isolated one?): the master's
        # heartbeats get the same chance as the witness before anything is decided
        return Decision(None, f"master unreachable ({silent}); the witness answers again "
                        "since a moment: waiting a dead interval", stuck)
    if witness_ok(i) and i.arbiter and not holds_lease(i):
        return Decision(None, f"master unreachable ({silent}) but this node does not hold "
                        "the arbiter's lease: not taking over", stuck)
    if witness_ok(i) and i.data_risk is not None:
        return Decision(None, f"master unreachable ({silent}) but {i.data_risk.text[0].lower()}"
                        f"{i.data_risk.text[1:]}: not taking over on its own", stuck)
    if witness_ok(i):
        lease = " and the arbiter's lease is ours" if i.arbiter else ""
        return Decision(Role.MASTER, f"master unreachable ({silent}) and a witness answers"
                        f"{lease}", stuck, bump_epoch=True)
    return Decision(None, f"master unreachable ({silent}) but no witness answers: not taking "
                    "over (this node may be the isolated one)", stuck)


def _decide_master(i: Inputs, stuck: tuple[Reason, ...]) -> Decision:
    peer = i.peer if peer_alive(i) else None
    if peer is not None and peer.role is Role.MASTER and not wins_election(
        i.epoch, i.node_id, peer.epoch, peer.node_id
    ):
        return Decision(
            Role.SLAVE,
            f"two masters after a partition: {peer.node_id} keeps the role (epoch "
            f"{peer.epoch} vs {i.epoch}); this node's data since the split diverged",
            stuck,
        )
    peer_age = i.now - i.peer.last_seen if i.peer is not None else float("inf")
    if peer_age >= i.timing.guard and i.witness_age >= i.timing.guard and not i.cloud:
        return Decision(Role.SLAVE, "isolated: neither the peer nor any witness answers; "
                        "releasing the node IP", stuck)
    if i.arbiter and peer_age >= i.timing.guard and not holds_lease(i) and not i.cloud:
        return Decision(Role.SLAVE, "the peer is unreachable and the arbiter's lease is "
                        "running out: releasing the node IP before it can pass to the peer",
                        stuck)
    return Decision(None, "serving", stuck)


def later(i: Inputs, dt: float) -> Inputs:
    """``i`` as it will be ``dt`` seconds later if nothing new arrives: every age grows,
    and the witness streak grows while the witness still counts, else it is 0."""
    witness_age = i.witness_age + dt
    streak = i.witness_streak + dt if witness_age < i.timing.witness_within else 0.0
    return replace(i, now=i.now + dt, witness_age=witness_age, witness_streak=streak,
                   arbiter_age=i.arbiter_age + dt)


def _outcome(i: Inputs) -> tuple[Role | None, bool, tuple[Reason, ...]]:
    decision = decide(i)
    return decision.target, decision.bump_epoch, decision.blockers


# just past a threshold: at exactly the threshold, ``now - t < limit`` may round either way
PAST = 1e-6


def next_change(i: Inputs) -> float:
    """The earliest time after ``i.now`` at which ``decide`` answers differently (target,
    epoch bump or blockers) if nothing new arrives; ``inf`` if it never does.

    Every rule compares an age with one of the timing thresholds, so the answer is constant
    between the moments those comparisons flip: each one is checked in turn."""
    t = i.timing
    candidates = [i.started + t.init_wait]
    if i.peer is not None:
        candidates += [i.peer.last_seen + t.guard, i.peer.last_seen + peer_dead_after(i)]
    if i.witness_age != float("inf"):
        answered = i.now - i.witness_age
        candidates += [answered + t.witness_within, answered + t.guard]
        if witness_ok(i):
            candidates.append(i.now - i.witness_streak + t.dead)
    if i.promote_after != float("-inf"):
        candidates.append(i.promote_after)
    if i.arbiter_age != float("inf"):
        candidates.append(i.now - i.arbiter_age + t.witness_within)
    if i.lease_until != float("-inf"):
        candidates.append(i.lease_until - t.lease_margin)
    now_outcome = _outcome(i)
    for candidate in sorted(c for c in candidates if c > i.now):
        if _outcome(later(i, candidate - i.now + PAST)) != now_outcome:
            return candidate
    return float("inf")
