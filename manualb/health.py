"""
Health: which servers of a pool may take requests.

Two sources feed one L{HealthMonitor} per pool:

  - B{passive marks}, failures seen on real traffic, with nginx's
    semantics: C{max_fails} failures within C{fail_timeout} make a server
    unavailable for C{fail_timeout}; after that, one live request tests it,
    and its success brings the server back;
  - B{active probes} (C{health_check = ...}: an HTTP request, or with
    C{type = tcp} a TCP connection only), with HAProxy's: C{fall}
    consecutive failed probes take a server down, C{rise} consecutive passed
    ones bring it back.  When a pool has probes, the passive marks take a
    server down the same way, and the probes bring it back (HAProxy's
    C{observe layer7} with C{on-error mark-down}).

A server that comes back ramps up over its C{slow_start}.  Every change of a
server's state is logged with its reason and kept in the monitor's
L{HealthMonitor.history}.

Two kinds of failure are not held against a server:

  - the proxy's own: a connection that could not be made because the proxy
    ran out of file descriptors, buffers or local ports
    (L{manualb.handoff.UpstreamLocalError}) counts neither as a failed
    request nor as a failed probe;
  - any failure of the only server of a pool (L{Pool.single
    <manualb.selection.Pool.single>}): as nginx ignores C{max_fails} and
    C{fail_timeout} when an upstream has a single server, passive marks never
    make it unavailable.  Active probes still take it down, as HAProxy's
    checks and nginx Plus's C{health_check} do: they were configured to say
    when the server is broken, and clients then get a 503 at once instead of
    waiting on it.  A lone primary with backups is marked as any other, and
    the backups serve meanwhile (nginx does the same).
"""

from __future__ import annotations

import random
import re
from collections import deque
from enum import Enum
from functools import partial
from typing import Callable, Protocol, Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol as _Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from manualb.config import HealthCheckConfig, ServerAddress, ServerConfig, keys
from manualb.syntax import Section, formatDuration, parseOptions, parseValue
from manualb.handoff import (
    OneConnection,
    UpstreamConnection,
    UpstreamError,
    UpstreamLocalError,
    connectWithTimeout,
    endpointForServer,
)
from manualb.interfaces import IHealthProbe, IResponseReceiver
from manualb.transports import releaseConnector

__all__ = [
    "DOWN",
    "HTTPProbe",
    "HealthEvent",
    "HealthLog",
    "HealthMonitor",
    "IHealthProbe",
    "Phase",
    "ServerChanges",
    "ServerHealth",
    "TCPProbe",
    "TRANSITIONS",
    "UP",
]

log = Logger()

UP = "up"
DOWN = "down"

HISTORY_LENGTH = 1000
_PROBE_BODY_LIMIT = 64 * 1024
# The smallest share of its weight a server in slow start gets, so that it
# still sees some traffic at the very start of its ramp.
_SLOW_START_FLOOR = 0.01


class ServerChanges:
    """
    Counts the changes of any server that may change which servers a pool
    offers its strategy, and at what weight: a phase of its health left or
    entered, its slow-start ramp over, its state or weight set by an
    operator.  A pool keeps what it found of its servers for as long as the
    count stays the same (see C{manualb.selection.Pool}).

    @ivar count: The changes so far.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def changed(self) -> None:
        """
        A server changed.
        """
        self.count += 1


#: The changes of every server of the process.
serverChanges = ServerChanges()


@attrs.frozen
class HealthEvent:
    """
    A change of a server's state.

    @ivar time: When, in seconds since the epoch.
    @ivar pool: The pool's name.
    @ivar server: The server's C{host:port}.
    @ivar state: L{UP} or L{DOWN}: the new state; or, set by an operator,
        the server's state then (C{up}, C{drain}, C{down}, C{backup}).
    @ivar reason: Why, in words.
    @ivar source: Who changed it: C{"health"} (what was seen of the
        server) or C{"admin"} (an operator).
    """

    time: float
    pool: str
    server: str
    state: str
    reason: str
    source: str = "health"


class Phase(Enum):
    """
    The named states of a server's health.  L{ServerHealth.state} folds them
    into L{UP} (the first three) and L{DOWN} (the last three).

    The transitions (L{TRANSITIONS}), with the event that makes each:

      - C{UP}, C{SLOW_START} -> C{FAILING}: a failure, fewer than
        C{max_fails} in the C{fail_timeout} window;
      - C{FAILING} -> C{UP} (or C{SLOW_START} while the ramp lasts): a
        success, or the window passes without reaching C{max_fails};
      - C{UP}, C{SLOW_START}, C{FAILING} -> C{UNAVAILABLE}: C{max_fails}
        failures within C{fail_timeout}, in a pool without probes;
      - C{UP}, C{SLOW_START}, C{FAILING} -> C{PROBE_DOWN}: the same in a
        pool with probes, or C{fall} failed probes (which also take an
        C{UNAVAILABLE} or C{TRIAL} server to C{PROBE_DOWN});
      - C{UNAVAILABLE} -> C{TRIAL}: C{fail_timeout} passed and a request
        goes to the server to test it;
      - C{TRIAL} -> C{UNAVAILABLE}: the test request failed (for another
        C{fail_timeout}) or was abandoned (the server may be tested again);
      - C{UNAVAILABLE}, C{TRIAL} -> C{UP} or C{SLOW_START}: a request
        succeeded;
      - C{PROBE_DOWN} -> C{UP} or C{SLOW_START}: C{rise} passed probes;
      - C{SLOW_START} -> C{UP}: its C{slow_start} ramp is over.
    """

    #: Serving, at its full weight.
    UP = "up"
    #: Serving, ramping up to its full weight after coming back.
    SLOW_START = "slow start"
    #: Serving, with failures counting towards C{max_fails}.
    FAILING = "failing"
    #: Refused requests for C{fail_timeout}; then one request may test it.
    UNAVAILABLE = "unavailable"
    #: Unavailable, with the one test request in flight.
    TRIAL = "on trial"
    #: Taken down (by probes, or by passive marks in a pool with probes)
    #: until C{rise} probes pass.
    PROBE_DOWN = "down"


# Module constants: an Enum member looked up on its class costs several
# times a global's lookup, and these are read on every request.
_UP_PHASE = Phase.UP
_UNAVAILABLE = Phase.UNAVAILABLE
_TRIAL = Phase.TRIAL
_SERVING = (Phase.UP, Phase.SLOW_START, Phase.FAILING)

#: Every transition L{ServerHealth} makes, as (from, to) pairs; see L{Phase}.
TRANSITIONS = frozenset(
    [(phase, Phase.FAILING) for phase in (Phase.UP, Phase.SLOW_START)]
    + [(Phase.FAILING, phase) for phase in (Phase.UP, Phase.SLOW_START)]
    + [(phase, Phase.UNAVAILABLE) for phase in _SERVING]
    + [(phase, Phase.PROBE_DOWN) for phase in _SERVING]
    + [(Phase.UNAVAILABLE, Phase.PROBE_DOWN), (Phase.TRIAL, Phase.PROBE_DOWN)]
    + [(Phase.UNAVAILABLE, Phase.TRIAL), (Phase.TRIAL, Phase.UNAVAILABLE)]
    + [
        (down, up)
        for down in (Phase.UNAVAILABLE, Phase.TRIAL, Phase.PROBE_DOWN)
        for up in (Phase.UP, Phase.SLOW_START)
    ]
    + [(Phase.SLOW_START, Phase.UP)]
)


class ServerHealth:
    """
    The health of one server, from passive marks and active probes: a
    L{Phase}, changed only along L{TRANSITIONS}.

    @ivar config: The server's configuration (C{max_fails}, C{fail_timeout},
        C{slow_start}).
    @ivar storedPhase: The phase as last changed, for a cheap look (a
        server plainly up); L{phase} also applies the transitions that time
        makes (a window or a ramp that passed).
    @ivar state: L{UP} or L{DOWN}.
    """

    def __init__(
        self,
        config: ServerConfig,
        clock: IReactorTime,
        *,
        single: bool = False,
        probes: HealthCheckConfig | None = None,
        onChange: Callable[[str, str], None] | None = None,
    ):
        """
        @param clock: Tells the time of C{fail_timeout} and C{slow_start}.
        @param single: Whether the server is the only one of its pool (see
            L{manualb.selection.Pool.single}): passive marks then never make
            it unavailable.
        @param probes: The pool's active probes, or L{None} when it has none:
            with probes, passive marks take the server down until C{rise}
            probes pass.
        @param onChange: Called with the new state (L{UP} or L{DOWN}) and the
            reason, in words, each time the state changes.
        """
        self.config = config
        self.clock = clock
        self.single = single
        self.probes = probes
        self.onChange = onChange
        self.storedPhase = Phase.UP
        self._fails = 0
        self._windowStart = 0.0
        self._unavailableUntil = 0.0
        self._probeFails = 0
        self._probePasses = 0
        self._upSince: float | None = None

    @property
    def phase(self) -> Phase:
        """
        The server's health state now.
        """
        phase = self.storedPhase
        if phase is Phase.SLOW_START:
            if self.clock.seconds() - self._upSince >= self.config.slow_start:
                phase = self.storedPhase = Phase.UP
                serverChanges.changed()
        elif phase is Phase.FAILING:
            if self.clock.seconds() - self._windowStart >= self.config.fail_timeout:
                # The window passed: the failures in it no longer count.
                self._fails = 0
                phase = self._enter(self._upPhase())
        return phase

    @property
    def state(self) -> str:
        """
        L{UP} or L{DOWN}: whether the server serves.
        """
        return DOWN if self.storedPhase in _NOT_SERVING else UP

    def available(self) -> bool:
        """
        Whether the server may take a request now: serving, or past its
        C{fail_timeout} with no test request in flight yet.
        """
        phase = self.storedPhase
        if phase is _UP_PHASE or phase in _SERVING:
            return True
        if phase is _UNAVAILABLE:
            return self.clock.seconds() >= self._unavailableUntil
        return False

    def weightFactor(self) -> float:
        """
        The share of its weight the server gets now: below 1 during its
        C{slow_start} after coming back.
        """
        if self._upSince is None:
            return 1.0
        elapsed = self.clock.seconds() - self._upSince
        slowStart = self.config.slow_start
        if elapsed >= slowStart:
            self._upSince = None
            if self.storedPhase is Phase.SLOW_START:
                self.storedPhase = Phase.UP
            serverChanges.changed()
            return 1.0
        return max(elapsed / slowStart, _SLOW_START_FLOOR)

    def _upPhase(self) -> Phase:
        if self._upSince is not None and self.clock.seconds() - self._upSince < self.config.slow_start:
            return Phase.SLOW_START
        return Phase.UP

    def _enter(self, phase: Phase) -> Phase:
        if phase is not self.storedPhase:
            if (self.storedPhase, phase) not in TRANSITIONS:
                raise RuntimeError(
                    "health of %s: no transition from %s to %s"
                    % (self.config.address.name, self.storedPhase.value, phase.value)
                )
            self.storedPhase = phase
            serverChanges.changed()
        return phase

    def _comeBack(self, reason: str) -> None:
        """
        Serve again after being down, ramping up over C{slow_start}.
        """
        serverChanges.changed()
        if self.config.slow_start:
            self._upSince = self.clock.seconds()
            self._enter(Phase.SLOW_START)
        else:
            self._upSince = None
            self._enter(Phase.UP)
        self._changed(UP, reason)

    def _goDown(self, phase: Phase, reason: str) -> None:
        serverChanges.changed()
        self._upSince = None
        self._enter(phase)
        self._changed(DOWN, reason)

    def _changed(self, state: str, reason: str) -> None:
        if self.onChange is not None:
            self.onChange(state, reason)

    # What the proxy reports.

    def requestStarted(self) -> None:
        """
        A request goes to the server; if the server is unavailable (past
        its C{fail_timeout}), this is the request that tests it.
        """
        if self.storedPhase is _UNAVAILABLE:
            self._enter(_TRIAL)

    def requestSucceeded(self) -> None:
        """
        The server answered a request well.
        """
        self._fails = 0
        phase = self.storedPhase
        if phase is _UP_PHASE:
            return
        if phase is _UNAVAILABLE or phase is _TRIAL:
            self._comeBack("a test request succeeded")
        elif phase is Phase.FAILING:
            self._enter(self._upPhase())

    def requestAbandoned(self) -> None:
        """
        A request to the server ended without telling whether it is healthy
        (its client went away).
        """
        if self.storedPhase is _TRIAL:
            self._enter(_UNAVAILABLE)

    def requestFailed(self, reason: str) -> None:
        """
        The server failed a request: count it against C{max_fails} (unless
        it is the pool's only server).
        """
        config = self.config
        if config.max_fails == 0 or self.single:
            return
        now = self.clock.seconds()
        phase = self.storedPhase
        if phase is Phase.UNAVAILABLE or phase is Phase.TRIAL:
            # The test request failed: another fail_timeout.
            self._enter(Phase.UNAVAILABLE)
            self._unavailableUntil = now + config.fail_timeout
            return
        if phase is Phase.PROBE_DOWN:
            return
        if now - self._windowStart >= config.fail_timeout:
            self._fails = 0
            self._windowStart = now
        self._fails += 1
        if self._fails < config.max_fails:
            self._enter(Phase.FAILING)
            return
        self._fails = 0
        why = "%d failure(s) within %s, last: %s" % (
            config.max_fails,
            formatDuration(config.fail_timeout),
            reason,
        )
        if self.probes is not None:
            self._markProbeDown(why)
        else:
            self._unavailableUntil = now + config.fail_timeout
            self._goDown(
                Phase.UNAVAILABLE, why + "; unavailable for " + formatDuration(config.fail_timeout)
            )

    # What the probes report.

    def probePassed(self) -> None:
        """
        An active probe passed.
        """
        self._probeFails = 0
        self._probePasses += 1
        rise = self.probes.rise
        if self.storedPhase is Phase.PROBE_DOWN and self._probePasses >= rise:
            self._comeBack("%d probe(s) passed" % (rise,))

    def probeFailed(self, reason: str) -> None:
        """
        An active probe failed.
        """
        self._probePasses = 0
        self._probeFails += 1
        fall = self.probes.fall
        if self.storedPhase is not Phase.PROBE_DOWN and self._probeFails >= fall:
            self._markProbeDown("%d probe(s) failed, last: %s" % (fall, reason))

    def _markProbeDown(self, reason: str) -> None:
        self._probePasses = 0
        if self.storedPhase in _SERVING:
            self._goDown(Phase.PROBE_DOWN, reason)
        else:
            # Unavailable already: the probes now decide when it is back.
            self._enter(Phase.PROBE_DOWN)


_NOT_SERVING = (Phase.UNAVAILABLE, Phase.TRIAL, Phase.PROBE_DOWN)


@implementer(IResponseReceiver)
class _ProbeResponse:
    """
    Reads a probe's response, up to a bound, and judges it.
    """

    def __init__(self, config: HealthCheckConfig, result: Deferred[None]):
        self._config = config
        self._result = result
        self._code = 0
        self._body: list[bytes] = []
        self._size = 0

    def responseStarted(self, code, reason, headers) -> None:
        self._code = code

    def responseData(self, data: bytes) -> None:
        if self._size < _PROBE_BODY_LIMIT:
            self._body.append(data)
            self._size += len(data)

    def responseDone(self) -> None:
        config = self._config
        if self._code not in config.expect:
            self._fail("status %d" % (self._code,))
        elif config.body is not None and not re.search(
            config.body.encode("utf-8"), b"".join(self._body)
        ):
            self._fail("body does not match %r" % (config.body,))
        elif not self._result.called:
            self._result.callback(None)

    def responseFailed(self, reason: UpstreamError) -> None:
        self._fail(str(reason))

    def _fail(self, why: str) -> None:
        if not self._result.called:
            self._result.errback(UpstreamError(why))


@implementer(IHealthProbe)
class HTTPProbe:
    """
    C{GET path} on a new connection to the server; the status must be one
    of C{expect}, and the body match C{body} when given.
    """

    def __init__(self, config: HealthCheckConfig):
        self.config = config

    def check(self, server: ProbeTarget) -> Deferred[None]:
        """
        The result fires once the probe's connection has closed, also when
        it is cancelled.
        """
        state: dict = {}
        pool = server.connections

        def cancel(result: Deferred) -> None:
            connection = state.get("connection")
            if connection is not None:
                _whenClosed(result, pool.whenClosed(connection))
                connection.abort()
            else:
                connecting.cancel()

        result: Deferred[None] = Deferred(cancel)
        connecting = pool.connect()

        def connected(connection: UpstreamConnection) -> None:
            state["connection"] = connection
            host = (self.config.host or server.name).encode("idna")
            head = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: manualb-health-check\r\n\r\n" % (
                self.config.path.encode("utf-8"),
                host,
            )
            outcome: Deferred[None] = Deferred()

            def settle(answer: object) -> None:
                def closed(ignored: None) -> None:
                    if result.called:
                        return
                    if isinstance(answer, Failure):
                        result.errback(answer)
                    else:
                        result.callback(None)

                pool.whenClosed(connection).addCallback(closed)

            outcome.addBoth(settle)
            connection.sendRequest(
                head, b"GET", _ProbeResponse(self.config, outcome), chunked=False, reuse=False
            )
            connection.finishBody()

        def failed(reason: Failure) -> None:
            if not result.called:
                result.errback(reason)

        connecting.addCallbacks(connected, failed)
        return result


class _Connected(_Protocol):
    """
    A probe's connection: made, then closed at once; C{closed} fires when
    it has.
    """

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        releaseConnector(self.transport)
        self.closed.callback(None)


@implementer(IHealthProbe)
class TCPProbe:
    """
    A TCP connection to the server: healthy when it can be made; it is then
    closed without a byte sent.  For servers that do not speak HTTP (the
    servers of a C{[stream]}).
    """

    def __init__(self, reactor: IReactorTCP):
        self.reactor = reactor

    def check(self, server: ProbeTarget) -> Deferred[None]:
        """
        The result fires once the probe's connection has closed, also when
        it is cancelled.
        """
        protocol = _Connected()

        def cancel(result: Deferred) -> None:
            if connecting.called:
                # Connected, and closing.
                _whenClosed(result, protocol.closed)
                protocol.transport.abortConnection()
            else:
                connecting.cancel()

        def connected(ignored: object) -> None:
            protocol.closed.addCallback(passed)

        def passed(ignored: None) -> None:
            if not result.called:
                result.callback(None)

        def failed(reason: Failure) -> None:
            if not result.called:
                result.errback(reason)

        result: Deferred[None] = Deferred(cancel)
        connecting = connectWithTimeout(
            self.reactor,
            endpointForServer(self.reactor, server.address),
            OneConnection(protocol),
            0,  # The monitor bounds the probe.
        )
        connecting.addCallbacks(connected, failed)
        return result


def _whenClosed(result: Deferred, closed: Deferred[None]) -> None:
    """
    Hold back the callbacks of a probe's C{result}, being cancelled, until
    its connection has C{closed}: the probe has ended only then.
    """
    result.pause()
    closed.addCallback(lambda ignored: result.unpause())


class HealthLog:
    """
    The changes of state of a pool's servers: logged, and the latest kept.

    @ivar pool: The pool's name.
    @ivar events: The latest changes, oldest first (at most
        L{HISTORY_LENGTH}).
    """

    def __init__(self, pool: str, clock: IReactorTime):
        self.pool = pool
        self.clock = clock
        self.events: deque[HealthEvent] = deque(maxlen=HISTORY_LENGTH)

    def record(self, server: str, state: str, reason: str) -> None:
        """
        Log a change of the state of C{server} (its C{host:port}) and keep
        it.
        """
        event = HealthEvent(self.clock.seconds(), self.pool, server, state, reason)
        self.events.append(event)
        emit = log.info if state == UP else log.warn
        emit(
            "upstream {pool}: server {server} is {state}: {reason}",
            pool=event.pool,
            server=event.server,
            state=state,
            reason=reason,
        )

    def note(self, server: str, state: str, reason: str) -> None:
        """
        Keep a change of the state of C{server} that its maker logged
        already (an operator's, through the admin API).
        """
        self.events.append(
            HealthEvent(self.clock.seconds(), self.pool, server, state, reason, "admin")
        )

    def recorder(self, server: str) -> Callable[[str, str], None]:
        """
        The C{onChange} of the L{ServerHealth} of C{server}.
        """
        return partial(self.record, server)


class ProbeTarget(Protocol):
    """
    What the monitor and the probes need of a server (a
    L{manualb.selection.Server} is one).
    """

    name: str
    config: ServerConfig
    health: ServerHealth

    @property
    def address(self) -> ServerAddress: ...


class HealthMonitor:
    """
    Runs the active probes of a pool's servers, and keeps the changes of
    their state.

    @ivar history: The latest changes, oldest first (at most
        L{HISTORY_LENGTH}).
    @ivar probing: Whether active probes run for this pool.
    """

    def __init__(
        self,
        healthLog: HealthLog,
        clock: IReactorTime,
        servers: Sequence[ProbeTarget],
        probeConfig: HealthCheckConfig | None = None,
        probe: IHealthProbe | None = None,
        rng: random.Random | None = None,
    ):
        """
        @param healthLog: Where the servers' healths record their changes.
        @param servers: The servers to probe, each with its health.
        @param probeConfig: The pool's C{health_check}, or L{None} for no
            probes.
        @param probe: The probe, when not the one C{probeConfig} names.
        """
        self.log = healthLog
        self.name = healthLog.pool
        self.history = healthLog.events
        self.clock = clock
        self.servers = tuple(servers)
        self.probeConfig = probeConfig
        if probe is None and probeConfig is not None:
            if probeConfig.type == "tcp":
                probe = TCPProbe(clock)
            else:
                probe = HTTPProbe(probeConfig)
        self.probe = probe
        self.probing = probe is not None
        self._rng = rng if rng is not None else random.Random()
        self._timers: dict[ProbeTarget, IDelayedCall] = {}
        self._inFlight: dict[ProbeTarget, Deferred] = {}
        self._stopping: list[Deferred[None]] = []
        self._running = False

    def start(self) -> None:
        """
        Start the probes, each server's first at a random point of the first
        interval so that they do not all go at once.
        """
        if not self.probing or self._running:
            return
        self._running = True
        for server in self.servers:
            if not server.config.down:
                self._schedule(server, self._rng.uniform(0, self.probeConfig.interval))

    def stop(self) -> Deferred[None]:
        """
        Stop the probes, and cancel those in flight.

        @return: Fires once every probe in flight has ended (its result
            fired: for L{HTTPProbe} and L{TCPProbe}, once its connection
            has closed).
        """
        self._running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for probe in list(self._inFlight.values()):
            probe.cancel()
        if not self._inFlight:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopping.append(stopped)
        return stopped

    def _schedule(self, server: ProbeTarget, delay: float) -> None:
        self._timers[server] = self.clock.callLater(delay, self._probe, server)

    def _probe(self, server: ProbeTarget) -> None:
        self._timers.pop(server, None)
        config = self.probeConfig
        timedOut = []

        def onTimeout(result, timeout):
            timedOut.append(True)
            return result

        def passed(result: None) -> None:
            server.health.probePassed()

        def failed(reason: Failure) -> None:
            if timedOut:
                why = "no answer within " + formatDuration(config.timeout)
            elif reason.check(CancelledError):
                return
            elif reason.check(UpstreamLocalError):
                log.error(
                    "upstream {pool}: health check of {server} not made: {reason}",
                    pool=self.name,
                    server=server.name,
                    reason=reason.getErrorMessage(),
                )
                return
            else:
                why = reason.getErrorMessage()
            server.health.probeFailed(why)

        def done(result: None) -> None:
            del self._inFlight[server]
            if self._running:
                # Jitter keeps the probes of many servers spread out.
                self._schedule(server, config.interval * self._rng.uniform(0.9, 1.1))
            elif not self._inFlight:
                stopping, self._stopping = self._stopping, []
                for stopped in stopping:
                    stopped.callback(None)

        probe = self.probe.check(server)
        self._inFlight[server] = probe
        probe.addTimeout(config.timeout, self.clock, onTimeoutCancel=onTimeout)
        probe.addCallbacks(passed, failed)
        probe.addBoth(done)


# The syntax of C{health_check}, read by the configuration file reader.

# Those and the classes (2xx) that health_check's expect accepts.
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_STATUS_CLASS = re.compile(r"[1-5][xX][xX]")
# What the Host header of a probe may be: a name or address, and a port.
_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _checkPath(text: str) -> str:
    """
    Check the C{path} of C{health_check}.
    """
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    return text


def _statusCodes(text: str) -> frozenset[int]:
    """
    Read the C{expect} of C{health_check}: status codes such as C{200} and
    classes such as C{2xx}, separated by commas.
    """
    codes: set[int] = set()
    seen: set[str] = set()
    for item in text.split(","):
        if _STATUS.fullmatch(item):
            codes.add(int(item))
        elif _STATUS_CLASS.fullmatch(item):
            first = int(item[0]) * 100
            codes.update(range(first, first + 100))
        else:
            raise ValueError(
                f"bad status {item!r} (expected codes such as 200 or classes "
                f"such as 2xx, separated by commas)"
            )
        if item.lower() in seen:
            raise ValueError(f"status {item!r} given twice")
        seen.add(item.lower())
    return frozenset(codes)


def _regularExpression(text: str) -> str:
    """
    Check the C{body} of C{health_check}: a regular expression, as the probe
    uses it, on the bytes of the response body.
    """
    try:
        re.compile(text.encode("utf-8"))
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return text


def _checkType(text: str) -> str:
    """
    Check the C{type} of C{health_check}: C{http} or C{tcp}, in any case.
    """
    if text.lower() not in ("http", "tcp"):
        raise ValueError(f"expected http or tcp, got {text!r}")
    return text.lower()


def _hostHeader(text: str) -> str:
    """
    Check the C{host} of C{health_check}: a host name or address, and
    optionally a port, as a C{Host} header gives them.
    """
    if not _HOST_HEADER.fullmatch(text):
        raise ValueError(
            f"expected a host name with an optional port, like "
            f"backend.example or backend.example:8080, got {text!r}"
        )
    return text


#: How the options of C{health_check} that are not simple values are read.
_OPTION_READERS = {
    "path": _checkPath,
    "expect": _statusCodes,
    "body": _regularExpression,
    "host": _hostHeader,
    "type": _checkType,
}


def _checkOptions() -> dict:
    """
    The options of C{health_check} (see L{manualb.syntax.parseOptions}), as
    L{HealthCheckConfig} declares them, in that order.
    """
    options = {}
    for name, spec in keys(HealthCheckConfig).items():
        read = _OPTION_READERS.get(name) or (
            lambda text, spec=spec: parseValue(text, spec.kind, spec.minimum)
        )
        options[name] = (read, f"{name}={spec.example}")
    return options


_CHECK_OPTIONS = _checkOptions()

#: The options of C{health_check} that only an HTTP probe has.
_HTTP_CHECK_OPTIONS = ("path", "expect", "body", "host")


def parseHealthCheck(section: Section) -> HealthCheckConfig | None:
    """
    Return the active probes of C{health_check} in C{section}: C{on} for
    the defaults of L{HealthCheckConfig}, C{off} for none (as when the key
    is absent), or C{name=value} options separated by spaces, such as
    C{path=/healthz interval=2s rise=2 fall=3 expect=2xx}.  With C{type=tcp}
    a probe only connects, so the options of the request and its response
    (C{path}, C{expect}, C{body}, C{host}) are refused.
    """
    key = "health_check"
    text = section.single(key)
    if text is None or text.lower() == "off":
        return None
    if text.lower() == "on":
        return HealthCheckConfig()
    words = text.split()
    for word in words:
        if word.lower() in ("on", "off"):
            raise section.error(
                key,
                f"{word!r} stands alone, got {text!r}; give either on, off "
                f"or name=value options",
            )
    try:
        options = parseOptions(words, _CHECK_OPTIONS, text)
    except ValueError as e:
        raise section.error(key, str(e)) from None
    if options.get("type") == "tcp":
        for option in _HTTP_CHECK_OPTIONS:
            if option in options:
                raise section.error(
                    key,
                    f"option {option!r} does not apply to type=tcp in {text!r} "
                    f"(a TCP check only connects; use type=http to send a "
                    f"request)",
                )
    defaults = HealthCheckConfig()
    interval = options.get("interval", defaults.interval)
    assert isinstance(interval, float)
    if "timeout" not in options:
        # As HAProxy's check timeout defaults to its inter: a short interval
        # alone does not make the default timeout a mistake.
        options["timeout"] = min(defaults.timeout, interval)
    timeout = options["timeout"]
    assert isinstance(timeout, float)
    if timeout > interval:
        # Quoted as written: timeout=1500ms, not 1s500ms.
        written = dict(word.split("=", 1) for word in words)
        if "interval" in written:
            given = f"interval={written['interval']}"
        else:
            given = f"interval={formatDuration(interval)} (the default)"
        raise section.error(
            key,
            f"timeout={written['timeout']} is longer than {given} in "
            f"{text!r} (a probe may take at most the interval)",
        )
    return attrs.evolve(defaults, **options)  # type: ignore[arg-type]
