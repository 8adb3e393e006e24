"""
Stage 5, selection: an upstream pool picks the server for a request, and
keeps the account of each attempt.

A L{Pool} owns its L{Server}s, their health and a balancing strategy (an
L{IBalancer}).  The proxy asks the pool, never the strategy: the pool offers
the strategy only the servers that may take a request now (not marked
C{down}, healthy, under C{max_conns}, not already tried for this request),
the primaries first and the C{backup} servers only when no primary can.

A request's attempts go through the L{Attempts} that L{Pool.select} gives:
each L{Attempts.next} returns a L{Lease} on the server chosen (or L{None}
once C{tries} or C{retry_timeout} forbid another attempt, or no server can
take it).  The lease counts the server busy, carries the attempt's verdict
to the server's health, times the attempt, and is released once.  The HTTP
exchange and the TCP stream proxy both go through it.  What was decided, and
why, is read back as L{manualb.records}.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Collection, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime

from manualb.config import ServerAddress, ServerConfig, UpstreamConfig
from manualb.handoff import ConnectionPool
from manualb.health import HealthMonitor, Phase, ServerHealth, serverChanges
from manualb.interfaces import IAffinity, IBalancer
from manualb.records import (
    Attempt,
    Candidate,
    Outcome,
    Selection,
    SelectionRecord,
    SkipReason,
    Skipped,
    StopReason,
)
from manualb.view import RequestView

_UP = Phase.UP
_UP_NAME = _UP.value
_BACKUP_NOT_NEEDED = SkipReason.BACKUP_NOT_NEEDED.value

#: How many of its latest attempts' durations a server keeps, for the
#: latency percentiles of the admin API.
LATENCY_WINDOW = 1024

#: The states an operator may set a server to (see L{Server.setState}).
ADMIN_STATES = ("up", "down", "drain")

__all__ = [
    "Attempts",
    "IBalancer",
    "Lease",
    "LeaseState",
    "Pool",
    "Server",
]


@attrs.define(eq=False)
class Server:
    """
    One backend server of a pool, as balancers and the proxy see it.

    @ivar config: Its configured address and options.
    @ivar health: Its health: passive marks and probes feed it.
    @ivar connections: Its pool of kept-alive connections.
    @ivar active: Requests in flight to this server right now (leases
        held).
    @ivar name: C{host:port}, as logs and the access log show the server.
    @ivar requests: Attempts that ended on this server.
    @ivar failures: Those of them that failed (see L{Lease.failed}).
    @ivar latencies: How long each of the latest L{LATENCY_WINDOW} attempts
        held the server, in seconds, oldest first.
    @ivar configured: Its configuration as the file gives it; C{config} is
        that, as an operator changed it live (L{setState}, L{setWeight}).
    @ivar adminState: The state an operator set (C{up}, C{down} or
        C{drain}), or L{None} for the file's.
    """

    config: ServerConfig
    health: ServerHealth
    connections: ConnectionPool | None
    active: int = 0
    name: str = attrs.field(init=False)
    requests: int = 0
    failures: int = 0
    latencies: deque = attrs.field(factory=lambda: deque(maxlen=LATENCY_WINDOW))
    configured: ServerConfig = attrs.field(init=False)
    adminState: str | None = None

    @name.default
    def _nameDefault(self) -> str:
        return self.config.address.name

    @configured.default
    def _configuredDefault(self) -> ServerConfig:
        return self.config

    @property
    def state(self) -> str:
        """
        C{drain} or C{down} while no new request may go to the server (set
        by an operator, or C{down} in the file), else C{backup} for a
        backup server, else C{up}.  Its health is apart (L{health}).
        """
        if self.config.down:
            return "drain" if self.adminState == "drain" else "down"
        return "backup" if self.config.backup else "up"

    def setState(self, state: str) -> None:
        """
        Set the server C{up}, C{down} or C{drain}, in place of the file's
        C{down} flag.  A C{down} or draining server gets no new request, and
        no strategy offers it to a new or returning sticky client (it is
        never a candidate); requests in flight to it finish.  The two differ
        only in what they say: C{drain} is the way out for a server about
        to be stopped.  Its idle connections close now, and busy ones once
        their exchange is done.

        @raise ValueError: For another state.
        """
        if state not in ADMIN_STATES:
            raise ValueError("state must be one of %s" % (", ".join(ADMIN_STATES),))
        self.adminState = state
        self.config = attrs.evolve(self.config, down=state != "up")
        serverChanges.changed()
        if self.connections is not None:
            self.connections.keepIdle(state == "up")

    def setWeight(self, weight: int) -> None:
        """
        Set the server's weight in place of the file's.
        """
        self.config = attrs.evolve(self.config, weight=weight)
        serverChanges.changed()

    @property
    def address(self) -> ServerAddress:
        """
        Where the server listens.
        """
        return self.config.address


    @property
    def weight(self) -> float:
        """
        The configured weight, less while the server is in its C{slow_start}
        ramp after coming back.
        """
        return self.config.weight * self.health.weightFactor()

    def available(self) -> bool:
        """
        Whether the server may take a request now.
        """
        config = self.config
        if config.down:
            return False
        if config.max_conns and self.active >= config.max_conns:
            return False
        return self.health.available()

    def unavailableBecause(self) -> SkipReason:
        """
        Why the server may not take a request now (when L{available} says
        it may not).
        """
        config = self.config
        if config.down:
            return SkipReason.DRAINING if self.adminState == "drain" else SkipReason.DOWN
        if config.max_conns and self.active >= config.max_conns:
            return SkipReason.MAX_CONNS
        return SkipReason.UNHEALTHY


class LeaseState(Enum):
    """
    Where a L{Lease} is in its life: L{HELD} from the pick, L{RELEASED} once
    the attempt no longer occupies its server.
    """

    HELD = "held"
    RELEASED = "released"


_HELD = LeaseState.HELD
_RELEASED = LeaseState.RELEASED
_SUCCEEDED = Outcome.SUCCEEDED
_FAILED = Outcome.FAILED
_SUCCEEDED_VALUE = _SUCCEEDED.value


class Lease:
    """
    One attempt's hold on a server: counts it busy (C{active}) while held,
    carries the attempt's verdict to its health, and times the attempt.

    The verdicts (L{succeeded}, L{failed}, L{abandoned}) may come while the
    lease is held; each is passed to the server's health as it comes (a
    server that answered, then broke off its body, has both).  L{release}
    ends the lease: the first call releases, a later one does nothing and
    returns C{False}.  A lease released without any verdict was abandoned.

    @ivar server: The server held.
    @ivar state: A L{LeaseState}.
    @ivar outcome: The latest verdict, an L{Outcome}, or L{None}.
    @ivar cause: Why the attempt failed, for a failed one.
    @ivar started: When the lease was taken.
    @ivar duration: How long it was held, once released.
    """

    __slots__ = (
        "server",
        "state",
        "outcome",
        "cause",
        "started",
        "duration",
        "_pool",
        "_view",
        "_pick",
    )

    def __init__(
        self, pool: Pool, view: RequestView, server: Server, pick: tuple, started: float
    ) -> None:
        # No reference back to the Attempts: a request's leases and
        # attempts then make no reference cycle, and go as soon as the
        # request does.
        self._pool = pool
        self._view = view
        self._pick = pick
        self.server = server
        self.state = _HELD
        self.outcome: Outcome | None = None
        self.cause: str | None = None
        self.duration: float | None = None
        self.started = started
        server.active += 1
        server.health.requestStarted()

    @property
    def held(self) -> bool:
        """
        Whether the lease still holds its server.
        """
        return self.state is _HELD

    def succeeded(self) -> None:
        """
        The server answered well.
        """
        self.outcome = _SUCCEEDED
        self.server.health.requestSucceeded()

    def failed(self, reason: str) -> None:
        """
        The server failed the attempt: C{reason} counts against its
        C{max_fails}, and is the cause of a retry.
        """
        self.outcome = Outcome.FAILED
        self.cause = reason
        self.server.health.requestFailed(reason)

    def abandoned(self) -> None:
        """
        The attempt ended without telling whether the server is healthy: the
        client went away, or the proxy lacked a resource of its own.
        """
        self.outcome = Outcome.ABANDONED
        self.server.health.requestAbandoned()

    def release(self) -> bool:
        """
        The attempt no longer occupies its server.

        @return: C{True} when this call released the lease, C{False} when
            it was released already.
        """
        if self.state is _RELEASED:
            return False
        self.state = _RELEASED
        if self.outcome is None:
            self.abandoned()
        self.duration = duration = self._pool.clock.seconds() - self.started
        server = self.server
        server.active -= 1
        server.requests += 1
        if self.outcome is _FAILED:
            server.failures += 1
        server.latencies.append(duration)
        return True

    def affinityHeaders(self) -> Sequence[tuple[bytes, bytes]]:
        """
        The response headers that send the client back to this server next
        time (see L{IAffinity}); empty for a strategy without affinity.
        """
        affinity = self._pool.affinity
        if affinity is None:
            return ()
        return affinity.affinityHeaders(self.server, self._view)

    def record(self) -> Attempt:
        """
        The decision record of this attempt.
        """
        return Attempt(
            self._pool._selection(*self._pick),
            self.outcome,
            self.cause,
            self.duration,
        )


class Attempts:
    """
    The attempts of one request on a pool, from L{Pool.select}.

    @ivar pool: The pool.
    @ivar view: The request, as the strategy sees it.
    @ivar firstTry: When the first attempt was asked for (L{None} before).
    @ivar leases: The leases taken, in order.
    @ivar stopped: Why L{next} last refused an attempt, or L{None}.
    """

    __slots__ = ("pool", "view", "clock", "firstTry", "leases", "stopped", "_refused")

    def __init__(self, pool: Pool, view: RequestView, clock: IReactorTime) -> None:
        self.pool = pool
        self.view = view
        self.clock = clock
        self.firstTry: float | None = None
        self.leases: list[Lease] = []
        self.stopped: StopReason | None = None
        self._refused: tuple | None = None

    @property
    def tried(self) -> list[Server]:
        """
        The servers tried, in order (one per lease).
        """
        return [lease.server for lease in self.leases]

    @property
    def current(self) -> Lease | None:
        """
        The latest lease, or L{None} before the first.
        """
        return self.leases[-1] if self.leases else None

    def serverNames(self) -> list[str]:
        """
        The C{host:port} of each server tried, in order, for the access log.
        """
        # Loops: a comprehension would make a function each time.
        names = []
        for lease in self.leases:
            names.append(lease.server.name)
        return names

    def times(self) -> list[float]:
        """
        How long each released attempt held its server, in order, for the
        access log (C{$upstream_response_time}).
        """
        times = []
        for lease in self.leases:
            duration = lease.duration
            if duration is not None:
                times.append(duration)
        return times

    def limit(self) -> StopReason | None:
        """
        What forbids another attempt now, C{tries} or C{retry_timeout}, or
        L{None} when another may be made.  The first attempt is always
        allowed.
        """
        if not self.leases:
            return None
        config = self.pool.config
        if config.tries and len(self.leases) >= config.tries:
            return StopReason.TRIES
        if config.retry_timeout and self.clock.seconds() - self.firstTry >= config.retry_timeout:
            return StopReason.RETRY_TIMEOUT
        return None

    def mayRetry(self) -> bool:
        """
        Whether C{tries} and C{retry_timeout} allow another attempt.
        """
        return self.limit() is None

    def canRetry(self) -> bool:
        """
        Whether another attempt is allowed and some server not yet tried
        could take it now.
        """
        return self.limit() is None and self.pool.canPick(self.tried)

    def next(self) -> Lease | None:
        """
        A lease on the server for the next attempt; L{None}, with
        C{stopped} saying why, when C{tries} or C{retry_timeout} forbid one
        or no server not yet tried can take the request.  The previous
        lease, if any, must be released first.
        """
        leases = self.leases
        pool = self.pool
        view = self.view
        if leases:
            stop = self.limit()
            if stop is not None:
                self.stopped = stop
                return None
            pick = pool._pick(view, self.tried)
        else:
            pick = pool._pick(view, ())
        server = pick[-1]
        if server is None:
            self.stopped = StopReason.NO_SERVER
            self._refused = pick
            return None
        now = self.clock.seconds()
        if self.firstTry is None:
            self.firstTry = now
        lease = Lease(pool, view, server, pick, now)
        leases.append(lease)
        return lease

    def record(self) -> SelectionRecord:
        """
        The decision record of the request's attempts so far.
        """
        return traceRecord(self.trace())

    def trace(self) -> tuple:
        """
        What L{record} needs, taken now for L{traceRecord} to make the
        record later: plain values in tuples (names, weights, the values of
        the enumerations), nothing of the request, its leases or the
        servers, so that many of them kept cost little to keep and nothing
        to the garbage collector.
        """
        pool = self.pool
        flatPick = pool._flatPick
        attempts = []
        for lease in self.leases:
            outcome = lease.outcome
            # Compared, not read: an enumeration's value is a descriptor.
            if outcome is _SUCCEEDED:
                outcome = _SUCCEEDED_VALUE
            elif outcome is not None:
                outcome = outcome.value
            attempts.append((flatPick(*lease._pick), outcome, lease.cause, lease.duration))
        refused = self._refused
        stopped = self.stopped
        head = pool._traceHead
        if head is None:
            head = pool._makeTraceHead()
        return head + (
            tuple(attempts),
            stopped.value if stopped is not None else None,
            flatPick(*refused) if refused is not None else None,
        )


def traceRecord(trace: tuple) -> SelectionRecord:
    """
    The decision record of the attempts of which C{trace} is the
    L{Attempts.trace}.
    """
    pool, strategy, key, attempts, stopped, refused = trace

    def selection(pick: tuple) -> Selection:
        candidates, skipped, chosen = pick
        return Selection(
            pool,
            strategy,
            key,
            tuple([Candidate(*candidate) for candidate in candidates]),
            tuple([Skipped(server, SkipReason(reason)) for server, reason in skipped]),
            chosen,
        )

    return SelectionRecord(
        pool,
        tuple(
            [
                Attempt(
                    selection(pick),
                    Outcome(outcome) if outcome is not None else None,
                    cause,
                    duration,
                )
                for pick, outcome, cause, duration in attempts
            ]
        ),
        StopReason(stopped) if stopped is not None else None,
        selection(refused) if refused is not None else None,
    )


class Pool:
    """
    An upstream pool: the servers of one C{[upstream NAME]} section, their
    health, and the strategy that spreads requests over them.

    @ivar monitor: Runs the servers' probes and keeps their history.
    @ivar affinity: The strategy, when it pins clients to servers (an
        L{IAffinity}); else L{None}.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        balancer: IBalancer,
        servers: Sequence[Server],
        monitor: HealthMonitor,
        clock: IReactorTime,
    ):
        """
        @param servers: The servers of C{config}, each whole (its health and
            connection pool made).
        @param monitor: The health monitor over C{servers}.
        @param clock: Times the attempts and C{retry_timeout}.
        """
        self.config = config
        self.name = config.name
        self.servers = list(servers)
        self.balancer = balancer
        self.affinity = balancer if IAffinity.providedBy(balancer) else None
        self.monitor = monitor
        self.clock = clock
        self._tiers = (
            [server for server in self.servers if not server.config.backup],
            [server for server in self.servers if server.config.backup],
        )
        # The built-in strategies pick among steady primaries by weights
        # the pool keeps (see _steadyPrimaries); a strategy of the user's,
        # or a subclass with a pick() of its own, is offered the servers
        # through pick() only.
        self._pickSteady = (
            balancer._pickSteady if "_pickSteady" in type(balancer).__dict__ else None
        )
        # What _steadyPrimaries found, and serverChanges.count then.
        self._steady: tuple | None = None
        self._steadyAt = -1
        # The start of every trace (see _makeTraceHead), once made.
        self._traceHead: tuple | None = None
        # The flat picks (see _flatPick) of the steady primaries, by the
        # server chosen, and serverChanges.count when they were made.
        self._steadyFlat: dict = {}
        self._steadyFlatAt = -1

    @property
    def single(self) -> bool:
        """
        Whether the pool has one server only, with no backup.  As in nginx
        (C{peers->single}), failures never make such a server unavailable:
        there is nowhere else to send its requests, and refusing them for
        C{fail_timeout} would only turn a passing failure into an outage.
        A lone primary with backups is not single: it is marked, and the
        backups serve meanwhile.
        """
        return len(self.servers) == 1

    def select(self, view: RequestView) -> Attempts:
        """
        The attempts of the request C{view} on this pool; take the first
        lease with L{Attempts.next}.
        """
        return Attempts(self, view, self.clock)

    def server(self, name: str) -> Server | None:
        """
        The server named C{name} (C{host:port}), or L{None}.
        """
        for server in self.servers:
            if server.name == name:
                return server
        return None

    def serversChanged(self) -> None:
        """
        An operator changed a server's state or weight: a strategy that
        keeps something of the servers' weights (the rings of the hashing
        ones) forgets it.
        """
        serverChanges.changed()
        forget = getattr(self.balancer, "serversChanged", None)
        if forget is not None:
            forget()

    def canPick(self, exclude: Collection[Server] = ()) -> bool:
        """
        Whether some server not in C{exclude} is available now.
        """
        return any(
            server not in exclude and server.available() for server in self.servers
        )

    def pick(self, view: RequestView, exclude: Collection[Server] = ()) -> Server | None:
        """
        Choose the server for C{view} among the available ones not in
        C{exclude}: a primary, or a backup while no primary is available.
        L{None} when none is available.
        """
        return self._pick(view, exclude)[-1]

    def _pick(self, view: RequestView, exclude: Collection[Server]) -> tuple:
        """
        Pick as L{pick} does, and return what the decision record needs, as
        a tuple that costs little: the tier used (0 primaries, 1 backups),
        the candidates offered, the skipped servers with why (or L{None}),
        and the server chosen (last).

        The candidates are the list offered when every one was plainly up
        (the usual case: nothing to copy); else a tuple of each with its
        effective weight and health phase then.
        """
        if not exclude:
            steady = self._steady
            if self._steadyAt != serverChanges.count:
                steady = self._steadyPrimaries()
            if steady is not None:
                # Every primary plainly up at its full weight, as when the
                # servers last changed: what the loop below would find.
                primaries, weights, total = steady
                pickSteady = self._pickSteady
                if pickSteady is not None:
                    chosen = pickSteady(primaries, weights, total, view)
                else:
                    # A list of its own, as the loop below gives.
                    chosen = self.balancer.pick(list(primaries), view)
                return 0, primaries, None, chosen
        skipped: list | None = None
        for tier, servers in enumerate(self._tiers):
            if exclude:
                candidates = [s for s in servers if s not in exclude and s.available()]
            else:
                candidates = [s for s in servers if s.available()]
            if len(candidates) != len(servers):
                left = [
                    (s, SkipReason.TRIED if s in exclude else s.unavailableBecause())
                    for s in servers
                    if s not in candidates
                ]
                skipped = left if skipped is None else skipped + left
            if candidates:
                chosen = self.balancer.pick(candidates, view)
                for server in candidates:
                    if server.health.storedPhase is not _UP:
                        snapshot = tuple([(s, s.weight, s.health.phase) for s in candidates])
                        return tier, snapshot, skipped, chosen
                return tier, candidates, skipped, chosen
        return 1, (), skipped, None

    def _steadyPrimaries(self) -> tuple | None:
        """
        When every primary server is plainly up at its full weight (its
        health L{Phase.UP}, out of any slow start, not C{down} or draining,
        no C{max_conns}), the primaries, their weights and the sum of them,
        kept until any server changes (L{serverChanges}); else L{None}.
        Until then every request offers the strategy the same servers, at
        the same weights: nothing about them need be looked at again.
        """
        self._steadyAt = serverChanges.count
        self._steady = None
        primaries = self._tiers[0]
        if not primaries:
            return None
        weights = []
        for server in primaries:
            config = server.config
            health = server.health
            if config.down or config.max_conns or health.storedPhase is not _UP:
                return None
            factor = health.weightFactor()
            if factor != 1.0:
                return None
            weights.append(config.weight * factor)
        if self._steadyAt != serverChanges.count:
            # A slow start ended as its weight was read: look again next time.
            return None
        self._steady = steady = (primaries, weights, sum(weights, 0.0))
        return steady

    def _makeTraceHead(self) -> tuple:
        """
        What every L{Attempts.trace} of this pool starts with, kept: its
        name, its strategy's and the strategy's key.
        """
        balancer = self.balancer
        key = getattr(balancer, "key", None)
        self._traceHead = head = (
            self.name,
            str(getattr(balancer, "name", type(balancer).__name__)),
            str(key) if key is not None else None,
        )
        return head

    def _selection(self, tier: int, offered, skipped: list | None, chosen) -> Selection:
        """
        The decision record of a pick, from what L{_pick} returned.
        """
        candidates, left, chosen = self._flatPick(tier, offered, skipped, chosen)
        balancer = self.balancer
        key = getattr(balancer, "key", None)
        return Selection(
            self.name,
            str(getattr(balancer, "name", type(balancer).__name__)),
            str(key) if key is not None else None,
            tuple([Candidate(*candidate) for candidate in candidates]),
            tuple([Skipped(server, SkipReason(reason)) for server, reason in left]),
            chosen,
        )

    def _flatPick(self, tier: int, offered, skipped: list | None, chosen) -> tuple:
        """
        What the decision record of a pick says, from what L{_pick}
        returned, in plain values: the candidates as C{(server, weight,
        effective weight, health)}, the servers left out as C{(server,
        reason)} and the name of the server chosen (or L{None}).

        A pick among the steady primaries (see L{_pick}) says the same
        until a server changes: it is made once for each server chosen.
        """
        if offered is self._tiers[0] and skipped is None:
            if self._steadyFlatAt != serverChanges.count:
                self._steadyFlat = {}
                self._steadyFlatAt = serverChanges.count
            flat = self._steadyFlat.get(chosen)
            if flat is None:
                flat = self._steadyFlat[chosen] = self._flattenPick(tier, offered, skipped, chosen)
            return flat
        return self._flattenPick(tier, offered, skipped, chosen)

    def _flattenPick(self, tier: int, offered, skipped: list | None, chosen) -> tuple:
        left = [(server.name, reason.value) for server, reason in skipped or ()]
        if tier == 0:
            left += [(server.name, _BACKUP_NOT_NEEDED) for server in self._tiers[1]]
        candidates = []
        for entry in offered:
            if isinstance(entry, Server):
                weight = entry.config.weight
                candidates.append((entry.name, weight, float(weight), _UP_NAME))
            else:
                server, effective, phase = entry
                candidates.append((server.name, server.config.weight, effective, phase.value))
        return tuple(candidates), tuple(left), chosen.name if chosen is not None else None
