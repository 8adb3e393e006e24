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
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from manualb.config import HealthCheckConfig, keys
from manualb.syntax import Section, formatDuration, parseOptions, parseValue
from manualb.handoff import (
    IResponseReceiver,
    UpstreamConnectFailed,
    UpstreamConnection,
    UpstreamError,
    UpstreamLocalError,
    describeFailure,
    endpointForServer,
    localConnectProblem,
)

if TYPE_CHECKING:
    from manualb.selection import Pool, Server

log = Logger()

UP = "up"
DOWN = "down"

HISTORY_LENGTH = 1000
_PROBE_BODY_LIMIT = 64 * 1024
# The smallest share of its weight a server in slow start gets, so that it
# still sees some traffic at the very start of its ramp.
_SLOW_START_FLOOR = 0.01


@attrs.frozen
class HealthEvent:
    """
    A change of a server's state.

    @ivar time: When, in seconds since the epoch.
    @ivar pool: The pool's name.
    @ivar server: The server's C{host:port}.
    @ivar state: L{UP} or L{DOWN}: the new state.
    @ivar reason: Why, in words.
    """

    time: float
    pool: str
    server: str
    state: str
    reason: str


class ServerHealth:
    """
    The health of one server, from passive marks and active probes.

    @ivar state: L{UP} or L{DOWN}.
    """

    def __init__(self, server: Server, monitor: HealthMonitor):
        self.server = server
        self.monitor = monitor
        self.clock = monitor.clock
        self.state = UP
        self._fails = 0
        self._windowStart = 0.0
        self._unavailableUntil: float | None = None
        self._trialInFlight = False
        self._probeDown = False
        self._probeFails = 0
        self._probePasses = 0
        self._upSince: float | None = None

    def available(self) -> bool:
        """
        Whether the server may take a request now: up, or past its
        C{fail_timeout} with no test request in flight yet.
        """
        if self._probeDown:
            return False
        until = self._unavailableUntil
        if until is None:
            return True
        return not self._trialInFlight and self.clock.seconds() >= until

    def weightFactor(self) -> float:
        """
        The share of its weight the server gets now: below 1 during its
        C{slow_start} after coming back.
        """
        if self._upSince is None:
            return 1.0
        elapsed = self.clock.seconds() - self._upSince
        slowStart = self.server.config.slow_start
        if elapsed >= slowStart:
            self._upSince = None
            return 1.0
        return max(elapsed / slowStart, _SLOW_START_FLOOR)

    # What the proxy reports.

    def requestStarted(self) -> None:
        """
        A request goes to the server; if the server is on trial, this is
        the request that tests it.
        """
        if self._unavailableUntil is not None:
            self._trialInFlight = True

    def requestSucceeded(self) -> None:
        """
        The server answered a request well.
        """
        self._fails = 0
        if self._unavailableUntil is not None:
            self._unavailableUntil = None
            self._trialInFlight = False
            self._update("a test request succeeded")

    def requestAbandoned(self) -> None:
        """
        A request to the server ended without telling whether it is healthy
        (its client went away).
        """
        self._trialInFlight = False

    def requestFailed(self, reason: str) -> None:
        """
        The server failed a request: count it against C{max_fails} (unless
        it is the pool's only server).
        """
        config = self.server.config
        if config.max_fails == 0 or self.monitor.pool.single:
            return
        now = self.clock.seconds()
        if self._unavailableUntil is not None:
            # The test request failed: another fail_timeout.
            self._trialInFlight = False
            self._unavailableUntil = now + config.fail_timeout
            return
        if self._probeDown:
            return
        if now - self._windowStart >= config.fail_timeout:
            self._fails = 0
            self._windowStart = now
        self._fails += 1
        if self._fails < config.max_fails:
            return
        self._fails = 0
        why = "%d failure(s) within %s, last: %s" % (
            config.max_fails,
            formatDuration(config.fail_timeout),
            reason,
        )
        if self.monitor.probing:
            self._markProbeDown(why)
        else:
            self._unavailableUntil = now + config.fail_timeout
            self._update(why + "; unavailable for " + formatDuration(config.fail_timeout))

    # What the probes report.

    def probePassed(self) -> None:
        """
        An active probe passed.
        """
        self._probeFails = 0
        self._probePasses += 1
        rise = self.monitor.probeConfig.rise
        if self._probeDown and self._probePasses >= rise:
            self._probeDown = False
            self._update("%d probe(s) passed" % (rise,))

    def probeFailed(self, reason: str) -> None:
        """
        An active probe failed.
        """
        self._probePasses = 0
        self._probeFails += 1
        fall = self.monitor.probeConfig.fall
        if not self._probeDown and self._probeFails >= fall:
            self._markProbeDown("%d probe(s) failed, last: %s" % (fall, reason))

    def _markProbeDown(self, reason: str) -> None:
        self._probeDown = True
        self._probePasses = 0
        self._update(reason)

    def _update(self, reason: str) -> None:
        state = DOWN if self._probeDown or self._unavailableUntil is not None else UP
        if state == self.state:
            return
        self.state = state
        if state == UP and self.server.config.slow_start:
            self._upSince = self.clock.seconds()
        else:
            self._upSince = None
        self.monitor.record(self.server, state, reason)


class IHealthProbe(Interface):
    """
    An active health check of one server.
    """

    def check(server: Server) -> Deferred[None]:
        """
        Probe C{server}: the result fires when the server is healthy and
        fails, with the reason, when it is not.  Cancelling it ends the
        probe.
        """


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

    def check(self, server: Server) -> Deferred[None]:
        state: dict = {}

        def cancel(result: Deferred) -> None:
            connection = state.get("connection")
            if connection is not None:
                connection.abort()
            else:
                connecting.cancel()

        result: Deferred[None] = Deferred(cancel)
        connecting = server.connections.connect()

        def connected(connection: UpstreamConnection) -> None:
            state["connection"] = connection
            host = (self.config.host or server.name).encode("idna")
            head = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: manualb-health-check\r\n\r\n" % (
                self.config.path.encode("utf-8"),
                host,
            )
            connection.sendRequest(
                head, b"GET", _ProbeResponse(self.config, result), chunked=False, reuse=False
            )
            connection.finishBody()

        def failed(reason: Failure) -> None:
            if not result.called:
                result.errback(reason)

        connecting.addCallbacks(connected, failed)
        return result


class _Connected(Protocol):
    """
    A probe's connection: made, then closed at once.
    """

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class _ProbeConnections(Factory):
    """
    Makes the probes' connections, quietly: they are many.
    """

    protocol = _Connected
    noisy = False


@implementer(IHealthProbe)
class TCPProbe:
    """
    A TCP connection to the server: healthy when it can be made; it is then
    closed without a byte sent.  For servers that do not speak HTTP (the
    servers of a C{[stream]}).
    """

    def __init__(self, reactor: IReactorTCP):
        self.reactor = reactor

    def check(self, server: Server) -> Deferred[None]:
        connecting = endpointForServer(self.reactor, server.address).connect(
            _ProbeConnections()
        )

        def connected(protocol: Protocol) -> None:
            return None

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError, ConnectingCancelledError):
                # Cancelled by the monitor (a timeout, or stopping).
                raise CancelledError()
            shortage = localConnectProblem(reason)
            if shortage is not None:
                raise UpstreamLocalError("cannot connect: " + shortage)
            raise UpstreamConnectFailed("connect failed: " + describeFailure(reason))

        connecting.addCallbacks(connected, failed)
        return connecting


class HealthMonitor:
    """
    Keeps the health of a pool's servers: takes the proxy's passive marks,
    runs the active probes, and remembers every change of state.

    @ivar history: The latest changes, oldest first (at most
        L{HISTORY_LENGTH}).
    @ivar probing: Whether active probes run for this pool.
    """

    def __init__(
        self,
        pool: Pool,
        clock: IReactorTime,
        probeConfig: HealthCheckConfig | None = None,
        probe: IHealthProbe | None = None,
        rng: random.Random | None = None,
    ):
        self.pool = pool
        self.clock = clock
        self.probeConfig = probeConfig
        if probe is None and probeConfig is not None:
            if probeConfig.type == "tcp":
                probe = TCPProbe(clock)
            else:
                probe = HTTPProbe(probeConfig)
        self.probe = probe
        self.probing = probe is not None
        self.history: deque[HealthEvent] = deque(maxlen=HISTORY_LENGTH)
        self._rng = rng if rng is not None else random.Random()
        self._timers: dict[Server, IDelayedCall] = {}
        self._inFlight: dict[Server, Deferred] = {}
        self._running = False
        for server in pool.servers:
            server.health = ServerHealth(server, self)

    def record(self, server: Server, state: str, reason: str) -> None:
        """
        Log a change of a server's state and keep it in the history.
        """
        event = HealthEvent(self.clock.seconds(), self.pool.name, server.name, state, reason)
        self.history.append(event)
        emit = log.info if state == UP else log.warn
        emit(
            "upstream {pool}: server {server} is {state}: {reason}",
            pool=event.pool,
            server=event.server,
            state=state,
            reason=reason,
        )

    def start(self) -> None:
        """
        Start the probes, each server's first at a random point of the first
        interval so that they do not all go at once.
        """
        if not self.probing or self._running:
            return
        self._running = True
        for server in self.pool.servers:
            if not server.config.down:
                self._schedule(server, self._rng.uniform(0, self.probeConfig.interval))

    def stop(self) -> None:
        """
        Stop the probes, and cancel those in flight.
        """
        self._running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for probe in list(self._inFlight.values()):
            probe.cancel()

    def _schedule(self, server: Server, delay: float) -> None:
        self._timers[server] = self.clock.callLater(delay, self._probe, server)

    def _probe(self, server: Server) -> None:
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
                    pool=self.pool.name,
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
