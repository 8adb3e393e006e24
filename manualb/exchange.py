"""
Stage 7, processing: one client request on its way through the stages, to a
backend the pool chooses and back, whatever front end received it.

The front end hands the exchange an L{IDownstream} (the client's side: the
request as a L{RequestView}, its body, and the means to answer) and the
exchange speaks to the client only through it.  The request first passes
the stage chain (L{IStage}, L{manualb.stages.defaultStages}); a stage may answer it, else
it goes to a server of the route's pool, and another one when that fails
and the request can safely go again.  The backend's response streams back
with back-pressure both ways.

A request of an HTTP/1.1 client that asks for a protocol upgrade (WebSocket:
C{Upgrade: websocket}, C{Connection: upgrade}) and has no body goes to the
backend with its C{Upgrade}; when the backend answers C{101 Switching
Protocols}, the front end gives up the client's connection
(L{IDownstream.takeOver}) and it is joined to the backend's as a byte
L{Tunnel}, until either side closes or the upstream's C{tunnel_timeout}
passes without a byte either way.
"""

from __future__ import annotations

import enum
from typing import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from manualb.accesslog import AccessLog
from manualb.bodies import NO_BODY
from manualb.compression import encoderFor
from manualb.errorpages import GATEWAY_DETAILS, pageOf, serverHeader
from manualb.forwarding import requestHead, responseHeaders
from manualb.handoff import (
    IResponseReceiver,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamError,
    UpstreamLocalError,
)
from manualb.interfaces import IDownstream, IRequestBody, IStage
from manualb.rules import SERVER_NAME, errorBody
from manualb.selection import Attempts, Lease, Pool, Server
from manualb.tunnel import Tunnel
from manualb.urlmap import encodePath
from manualb.view import Answer, Passage

log = Logger()

_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
_GATEWAY_ERRORS = {
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_SERVER = (b"Server", SERVER_NAME)
_HTML = (b"Content-Type", b"text/html; charset=utf-8")


class State(enum.Enum):
    """
    The life of an L{Exchange}.  It starts in C{ROUTING} and ends in
    C{DONE} or C{TUNNEL}; the transitions are::

        ROUTING --(a stage answers)--------------------------------> DONE
        ROUTING --(routed; server picked)--------------------------> CONNECTING
        ROUTING --(routed; delayed, or body held for a check)------> WAITING
        WAITING --(delay over; body check passed)------------------> CONNECTING
        WAITING --(body check answers)-----------------------------> DONE
        ROUTING --(routed; no server)------------------------------> DONE (503)
        CONNECTING --(connected; request sent)---------------------> AWAITING
        CONNECTING, AWAITING --(failed; may go again)--------------> CONNECTING
        CONNECTING, AWAITING --(failed; may not)-------------------> DONE (5xx)
        AWAITING --(response head)---------------------------------> STREAMING
        AWAITING --(101 Switching Protocols)-----------------------> TUNNEL
        STREAMING --(response complete)----------------------------> DONE
        STREAMING --(backend failed: response broken off)----------> DONE
        any but DONE, TUNNEL --(client gone: 499)------------------> DONE
        any but DONE, TUNNEL --(body too large: 413)---------------> DONE

    In C{TUNNEL} the exchange is over as HTTP: what either side sends goes
    through the tunnel, and the request is logged when it closes.
    """

    ROUTING = "routing"
    WAITING = "waiting"
    CONNECTING = "connecting"
    AWAITING = "awaiting response"
    STREAMING = "streaming response"
    TUNNEL = "tunnel"
    DONE = "done"


_FINAL = frozenset([State.DONE, State.TUNNEL])
_STARTED = frozenset([State.STREAMING, State.TUNNEL])
# Module constants for the states every request goes through: an Enum
# member looked up on its class costs several times a global's lookup.
_ROUTING = State.ROUTING
_CONNECTING = State.CONNECTING
_AWAITING = State.AWAITING
_STREAMING = State.STREAMING
_TUNNEL = State.TUNNEL
_DONE = State.DONE


@implementer(IResponseReceiver)
class Exchange:
    """
    One client request on its way to a backend and back, trying another
    server when one fails and the request can safely go again.

    @ivar state: Where the exchange is in its life (L{State}).
    @ivar passage: The request and the stages' decisions (the route, the
        pool's choices).
    @ivar pool: The route's pool, once routed.
    @ivar attempts: The pool's attempts for the request, once routed: the
        leases on the servers tried, and the decision records.
    @ivar lease: The lease of the current (or last) try.
    @ivar connection: The backend connection of the current try, once
        connected.
    @ivar code: The status of the response started, once it is.
    @ivar tunnel: The byte tunnel, after a C{101}.
    @ivar recent: Where each finished request's records go for whoever
        explains them (C{manualb.admin.RecentRequests}), or L{None}.
    @ivar listener: The listener that received the request, for them.
    @ivar metrics: Counts each finished request (C{manualb.metrics.Metrics}),
        or L{None}.
    """

    def __init__(
        self,
        downstream: IDownstream,
        stages: Sequence[IStage],
        reactor: IReactorTime,
        accessLog: AccessLog | None = None,
        recent=None,
        listener: str = "",
        metrics=None,
    ):
        self.downstream = downstream
        self.stages = stages
        self.reactor = reactor
        self.accessLog = accessLog
        self.recent = recent
        self.listener = listener
        self.metrics = metrics
        self.view = view = downstream.view
        self.passage = Passage(view, downstream.refusal, downstream.hsts)
        self.state = _ROUTING
        self.pool: Pool | None = None
        self.target = b""
        self.body: IRequestBody | None = None
        self.idempotent = view.method in _IDEMPOTENT
        self.upgrade = False
        self.head = b""
        self.attempts: Attempts | None = None
        self.lease: Lease | None = None
        self.connection: UpstreamConnection | None = None
        self.code = 0
        self.tunnel: Tunnel | None = None
        self._connecting = None
        # The reactor call that ends a delay (Passage.delay).
        self._delayed = None
        # Whether the current try's connection was a kept-alive one.
        self._reused = False
        self._lastError: UpstreamError | None = None
        # The route's controls (manualb.routecontrols), once routed to a
        # route that has some; the response's compression, if any.
        self.controls = None
        self._encoder = None

    @property
    def server(self) -> Server | None:
        """
        The server of the current (or last) try, or L{None} before the first.
        """
        return self.lease.server if self.lease is not None else None

    @property
    def tried(self) -> list[Server]:
        """
        The servers tried, in order.
        """
        return self.attempts.tried if self.attempts is not None else []

    def start(self) -> None:
        """
        Pass the request through the stages, and on to a backend unless one
        of them answers it.
        """
        downstream = self.downstream
        downstream.whenGone(self._clientGone)
        passage = self.passage
        for stage in self.stages:
            answer = stage.handle(passage)
            if answer is not None:
                self._answer(
                    answer.code, answer.reason, answer.detail, answer.headers, answer.page
                )
                return
        decision = passage.route
        if decision is None:
            self._answer(404, b"Not Found", b"No route matches this path.")
            return
        controls = decision.route.controls
        if controls is not None:
            self.controls = controls
            if controls.answer is not None:
                answer = controls.answer.answer(self.view, controls.name)
                self._answer(
                    answer.code, answer.reason, answer.detail, answer.headers, answer.page
                )
                return
        self.pool = pool = decision.route.pool
        view = self.view
        self.attempts = passage.selection = pool.select(view)
        target = view.target
        if decision.path != view.path or target[:1] != b"/":
            target = _target(target, view.path, decision.path)
        self.target = target
        self.body = body = downstream.body
        if body is NO_BODY:
            # Nothing to limit, to keep or to be too large.
            self.upgrade = downstream.mayUpgrade()
        else:
            if passage.bodyLimit is not None and not body.limitTo(passage.bodyLimit):
                self._bodyTooLarge()
                return
            body.whenTooLarge(self._bodyTooLarge)
            self.upgrade = body.length == 0 and downstream.mayUpgrade()
            if self.idempotent:
                body.keepForRetry(pool.config.retry_body_limit)
        if passage.delay > 0:
            self.state = State.WAITING
            self._delayed = self.reactor.callLater(passage.delay, self._delayOver)
        elif passage.bodyCheck is not None and body.length != 0:
            self._holdBody()
        else:
            self._attempt()

    def _delayOver(self) -> None:
        """
        The request has waited as long as the stages asked (a rate limit's
        delay): on to the body check, or to a backend.
        """
        self._delayed = None
        if self.state is not State.WAITING:
            return
        if self.passage.bodyCheck is not None and self.body.length != 0:
            self._holdBody()
        else:
            self._attempt()

    def _holdBody(self) -> None:
        """
        Keep the body from any backend until its first bytes have passed the
        stage's check (L{Passage.bodyCheck}).
        """
        self.state = State.WAITING
        self.body.hold(self.passage.bodyCheckSize, self._checkBody)

    def _checkBody(self, prefix: bytes) -> None:
        if self.state is not State.WAITING:
            return
        try:
            answer = self.passage.bodyCheck(prefix)
        except Exception:
            log.failure(
                "checking the body of {request}",
                request=self._requestText(),
            )
            answer = Answer(
                500, b"Internal Server Error", b"The request could not be checked."
            )
        if answer is None:
            self._attempt()
            return
        # The rest of the body is not read for a backend: the connection
        # closes after the answer.
        self.downstream.closeAfterResponse()
        self._answer(answer.code, answer.reason, answer.detail, answer.headers, answer.page)

    def _attempt(self) -> None:
        """
        Send the request to the next server the pool picks.
        """
        lease = self.attempts.next()
        if lease is None:
            self._noServer()
            return
        self.state = _CONNECTING
        self.lease = lease
        server = lease.server
        view = self.view
        self.head = requestHead(
            view.method,
            self.target,
            view.headers,
            (view.clientAddress or "-").encode("ascii"),
            self.downstream.version,
            view.secure,
            self.body.length,
            server.name.encode("ascii"),
            upgrade=self.upgrade,
            requestId=self.passage.requestId,
        )
        controls = self.controls
        if controls is not None and controls.headers is not None:
            self.head = controls.headers.requestHead(
                self.head, view, controls.name, self.passage.requestId
            )
        connections = server.connections
        idle = connections.takeIdle()
        if idle is not None:
            self.connection = None
            self._connected(idle)
        else:
            self._connect(connections.connect(self.pool.config))

    def _noServer(self) -> None:
        if self._lastError is not None:
            self._answerError(self._lastError)
            return
        log.warn(
            "upstream {pool}: no server available for {request}",
            pool=self.pool.name,
            request=self._requestText(),
        )
        self._answer(
            503, b"Service Unavailable", b"No server of this service is available now."
        )

    def _connect(self, connecting) -> None:
        self.connection = None
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        if self.state is _DONE:
            self.server.connections.release(connection)
            return
        self.state = _AWAITING
        self.connection = connection
        self._reused = connection.reused
        connection.sendRequest(
            self.head,
            self.view.method,
            self,
            chunked=self.body.length is None,
            upgrade=self.upgrade,
            config=self.pool.config,
        )
        if self.body.length == 0:
            connection.finishBody()
        else:
            self.body.deliverTo(connection)

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        if self.state is State.DONE:
            return
        if reason.check(UpstreamError):
            self.responseFailed(reason.value)
        else:
            self.responseFailed(UpstreamError(reason.getErrorMessage()))

    def _mayRetry(self) -> bool:
        """
        Whether the request may go to another server: not once any of the
        response has gone to the client; a request that reached a server
        only when it is idempotent and its body can be sent again; and
        within C{tries} and C{retry_timeout}.
        """
        if self.state is State.DONE or self.state in _STARTED:
            return False
        reached = self.connection is not None
        if reached and not (self.idempotent and self.body.replayable):
            return False
        return self.attempts.mayRetry()

    # IResponseReceiver

    def responseStarted(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        lease = self.lease
        if code == 101:
            # Only ever for an upgrade request: the connection parser
            # refuses a 101 to any other.
            lease.succeeded()
            self._switch(reason, headers)
            return
        if code in self.pool.config.passive_fail_on:
            failure = UpstreamError("status %d" % (code,))
            failure.status = code
            lease.failed(str(failure))
            if self._mayRetry() and self.attempts.canRetry():
                self._logFailure(failure, retrying=True)
                self._lastError = failure
                self.connection.abort()
                self.body.detach()
                self._endAttempt()
                self._attempt()
                return
        else:
            lease.succeeded()
        self.state = _STREAMING
        self.code = code
        passage = self.passage
        own = passage.headers
        outgoing = own + [_SERVER if passage.local is None else passage.local.server]
        outgoing.extend(lease.affinityHeaders())
        # A loop: a comprehension would make a function each time.
        replaced = set()
        for name, _ in own:
            replaced.add(name.lower())
        controls = self.controls
        if controls is not None and controls.headers is not None:
            replaced |= controls.headers.hidden
        outgoing += responseHeaders(headers, replaced=replaced)
        if controls is not None:
            outgoing = self._controlled(controls, code, outgoing, headers)
        if self.recent is not None:
            self.recent.explainHeader(self.passage, code, self.listener, outgoing)
        downstream = self.downstream
        downstream.startResponse(code, reason, outgoing)
        downstream.registerProducer(self.connection)
        if self._encoder is None:
            # The body goes on as it came: the front end may move it itself.
            self.connection.bodyTaker = getattr(downstream, "takeBody", None)

    def _controlled(self, controls, code, outgoing, headers):
        """
        The headers of a proxied response as the route's controls make
        them: its header rules, and its compression.
        """
        rules = controls.headers
        view = self.view
        if rules is not None:
            outgoing = rules.responseHeaders(outgoing, headers)
            outgoing += rules.addedHeaders(code, view, controls.name, self.passage.requestId)
        if controls.gzip is not None:
            self._encoder = encoderFor(
                controls.gzip, view.method, code, view.header(b"accept-encoding"), outgoing
            )
        return outgoing

    def responseData(self, data: bytes) -> None:
        state = self.state
        if state is _STREAMING:
            if self._encoder is not None:
                data = self._encoder.compress(data)
                if not data:
                    return
            self.downstream.write(data)
        elif state is _TUNNEL and self.tunnel is not None:
            self.tunnel.fromServer(data)

    def responseDone(self) -> None:
        state = self.state
        if state is _TUNNEL:
            if self.tunnel is not None:
                self.tunnel.serverLost()
            return
        if state is _DONE:
            return
        self._endAttempt()
        downstream = self.downstream
        downstream.unregisterProducer()
        self.body.discard()
        self.state = _DONE
        if self._encoder is not None:
            downstream.write(self._encoder.finish())
        downstream.finish()
        self._log(self.code)

    def responseFailed(self, reason: UpstreamError) -> None:
        state = self.state
        if state is State.TUNNEL:
            if self.tunnel is not None:
                log.info(
                    "upstream {server} ({pool}): tunnel for {uri} broke: {reason}",
                    server=self.server.name,
                    pool=self.pool.name,
                    uri=self.view.target.decode("ascii", "replace"),
                    reason=str(reason),
                )
                self.tunnel.serverLost()
            return
        if (
            isinstance(reason, UpstreamClosed)
            and reason.beforeResponse
            and self._reused
            and self.body.length == 0
            and self.idempotent
            and state is not State.DONE
        ):
            # The server closed a kept-alive connection as it was reused:
            # not a failure of the server; try a fresh connection to it.
            self._reused = False
            self.state = State.CONNECTING
            self._connect(self.server.connections.connect())
            return
        if isinstance(reason, UpstreamLocalError):
            self.lease.abandoned()
            self._endAttempt()
            self._localFailure(reason)
            return
        self.lease.failed(str(reason))
        self._endAttempt()
        if self._mayRetry():
            self._logFailure(reason, retrying=True)
            self._lastError = reason
            self.body.detach()
            self._attempt()
            return
        self._logFailure(reason, retrying=False)
        self.body.discard()
        if state is State.DONE:
            return
        if state is State.STREAMING:
            self.downstream.unregisterProducer()
            self.state = State.DONE
            self._log(self.code)
            self.downstream.breakOff()
        else:
            self._answerError(reason)

    # Switching protocols.

    def _switch(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        The backend switched protocols: send its 101 on to the client, take
        the client's connection over from the front end and join the two
        connections.  The server stays counted as busy (C{active}) until the
        tunnel closes, when the access log line is written.
        """
        self.state = State.TUNNEL
        self.code = 101
        backend = self.connection.transport
        lines = [
            b"HTTP/1.1 101 ",
            reason or b"Switching Protocols",
            b"\r\nServer: ",
            serverHeader(self.passage)[1],
            b"\r\n",
        ]
        for name, value in responseHeaders(headers, upgrade=True):
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        tunnel = Tunnel(self.reactor, self.pool.config.tunnel_timeout, self._tunnelClosed)
        try:
            client, early = self.downstream.takeOver(_TunnelClient(tunnel))
        except Exception:
            log.failure(
                "upstream {server} ({pool}): cannot take over the client's "
                "connection for the upgraded {uri}",
                server=self.server.name,
                pool=self.pool.name,
                uri=self.view.target.decode("ascii", "replace"),
            )
            self._endAttempt()
            self._log(502)
            backend.abortConnection()
            self.downstream.abort()
            return
        self.tunnel = tunnel
        client.write(b"".join(lines))
        tunnel.join(client, backend)
        # The front end may have paused reading while the request was handled.
        client.resumeProducing()
        if early:
            tunnel.fromClient(early)

    def _tunnelClosed(self, tunnel: Tunnel) -> None:
        self._endAttempt()
        self._log(101, sent=tunnel.toClient)

    # Ending.

    def _endAttempt(self) -> None:
        """
        The current attempt no longer occupies its server.
        """
        if self.lease is not None:
            self.lease.release()

    def _requestText(self) -> str:
        """
        The request's method and target, as the log lines about it show
        them.
        """
        view = self.view
        return (view.method + b" " + view.target).decode("ascii", "replace")

    def _localFailure(self, reason: UpstreamLocalError) -> None:
        """
        The proxy could not connect for want of its own resources: the
        server is not to blame and the next one would fail the same way, so
        the client gets a 503 at once.
        """
        log.error(
            "upstream {server} ({pool}): {reason} while proxying {request}; "
            "answering 503 (the server is not marked as failed)",
            server=self.server.name,
            pool=self.pool.name,
            reason=str(reason),
            request=self._requestText(),
        )
        self.body.discard()
        self._answerError(reason)

    def _logFailure(self, reason: UpstreamError, retrying: bool) -> None:
        log.warn(
            "upstream {server} ({pool}) failed: {reason} while proxying "
            "{request}{next}",
            server=self.server.name,
            pool=self.pool.name,
            reason=str(reason),
            request=self._requestText(),
            next="; trying another server" if retrying else "",
        )

    def _abandonAttempt(self) -> None:
        """
        Give up the current attempt for a reason of the client's, not the
        server's: its connection, or the connecting, goes.
        """
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        lease = self.lease
        if lease is not None and lease.held:
            lease.abandoned()
            lease.release()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.connection is not None:
            self.connection.abort()

    def _clientGone(self, reason: Failure) -> None:
        if self.state in _FINAL:
            return
        self.state = State.DONE
        self._abandonAttempt()
        self._log(499)

    def _bodyTooLarge(self) -> None:
        state = self.state
        if state in _FINAL:
            return
        log.info(
            "request body of {request} is larger than client_max_body_size",
            request=self._requestText(),
        )
        # Done first: abandoning the attempt may fail it, which must not
        # answer in its turn.
        self.state = State.DONE
        self._abandonAttempt()
        downstream = self.downstream
        downstream.closeAfterResponse()
        if state is State.STREAMING:
            downstream.unregisterProducer()
            self._log(413)
            downstream.breakOff()
        else:
            self._send(
                413,
                b"Content Too Large",
                b"The request body is larger than this server accepts.",
            )

    def _answerError(self, reason: UpstreamError) -> None:
        # What went wrong is in the log, not on the page (which shows the
        # request id to find it there).
        title = _GATEWAY_ERRORS.get(reason.status) or RESPONSES.get(reason.status, b"Error")
        detail = GATEWAY_DETAILS.get(reason.status, b"The request could not be served.")
        self._answer(reason.status, title, detail)

    def _answer(
        self,
        code: int,
        title: bytes,
        detail: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        page: bytes | None = None,
    ) -> None:
        """
        Answer the request without a backend: a short HTML page about
        C{detail}, or no body when it is empty; or C{page} when given.
        """
        self.state = State.DONE
        self._send(code, title, detail, headers, page)

    def _send(
        self,
        code: int,
        title: bytes,
        detail: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        page: bytes | None = None,
    ) -> None:
        passage = self.passage
        local = passage.local
        if page is None and (local is not None or passage.route is not None):
            page = pageOf(code, passage)
        if page is not None:
            body = page
        elif detail:
            if code in GATEWAY_DETAILS and passage.requestId:
                detail += b"</p><p>Request id: " + passage.requestId
            body = errorBody(code, title, detail)
        else:
            body = b""
        outgoing = passage.headers + list(headers)
        outgoing.append(_SERVER if local is None else local.server)
        if passage.route is not None:
            controls = passage.route.route.controls
            if controls is not None and controls.headers is not None:
                outgoing += controls.headers.addedHeaders(
                    code, self.view, controls.name, passage.requestId
                )
        if body and not any(name.lower() == b"content-type" for name, _ in headers):
            outgoing.append(_HTML)
        outgoing.append((b"Content-Length", b"%d" % (len(body),)))
        if self.recent is not None:
            self.recent.explainHeader(self.passage, code, self.listener, outgoing)
        self.code = code
        downstream = self.downstream
        downstream.startResponse(code, title, outgoing)
        downstream.write(body)
        downstream.finish()
        self._log(code)

    def _measure(self, status: int, times: list | None) -> None:
        """
        Count the finished request: its route, upstream, the server that
        last had it, its status, its time on the servers (C{times}, each
        attempt's, or L{None} when it had no attempts) and its tries, and
        the gatekeeper's decisions.
        """
        passage = self.passage
        metrics = self.metrics
        route = passage.route
        if route is not None:
            route = route.route.name
        leases = self.attempts.leases if self.attempts is not None else None
        if not leases:
            metrics.requestDone(route, None if self.pool is None else self.pool.name, None, status, None, 0)
        else:
            metrics.requestDone(
                route, self.pool.name, leases[-1].server.name, status, sum(times), len(leases)
            )
        decisions = passage.decisions
        if decisions:
            for record in decisions:
                metrics.gatekeeper(record.rule, record.action)

    def _log(self, status: int, sent: int | None = None) -> None:
        metrics = self.metrics
        accessLog = self.accessLog
        # Each attempt's time, taken once for both, when either needs it.
        attempts = self.attempts
        times = None
        if attempts is not None and (metrics is not None or accessLog is not None):
            times = attempts.times()
        if metrics is not None:
            self._measure(status, times)
        if self.recent is not None:
            self.recent.keep(self.passage, status, self.reactor.seconds(), self.listener)
        if accessLog is not None:
            self.downstream.logTo(
                accessLog,
                status,
                attempts.serverNames() if attempts is not None else [],
                times if times is not None else [],
                sent,
                self.passage,
            )


def _target(uri: bytes, path: bytes, newPath: bytes) -> bytes:
    """
    The request target sent to the backend, always in origin form
    (C{/path?query}): the client's own path and query, as the client
    encoded them, when the route keeps the path; else the path the route
    made of the normalised one, percent-encoded again (L{encodePath}), with
    the client's query.  No byte that the normalisation decoded goes on raw.
    """
    if newPath != path:
        _, separator, query = uri.partition(b"?")
        return encodePath(newPath) + separator + query
    if uri[:1] == b"/":
        return uri
    # Absolute form: what follows the authority.
    rest = uri.partition(b"://")[2]
    start = len(rest)
    for delimiter in (b"/", b"?"):
        found = rest.find(delimiter)
        if found != -1:
            start = min(start, found)
    origin = rest[start:]
    return origin if origin[:1] == b"/" else b"/" + origin


class _TunnelClient(Protocol):
    """
    The client's side of an upgraded connection, once taken over from the
    front end.
    """

    def __init__(self, tunnel: Tunnel):
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.fromClient(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self.tunnel.clientLost(reason)
