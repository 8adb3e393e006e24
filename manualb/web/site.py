"""
The twisted.web front end: the site, request and resource classes that
carry a client's HTTP request (HTTP/1.x or an HTTP/2 stream) into an
L{Exchange}, through L{IDownstream}; and the hand-over of an upgraded
connection.  Every private name of Twisted that manualb relies on is used
here, and nowhere else in the request path.

L{ProxyResource} works in any L{twisted.web.server.Site}; there the request
body is read whole (Twisted spools a large one to a temporary file) before it
goes on.  In a L{ProxySite}, built on L{StreamingRequest}, the body streams to
the backend as it arrives, with back-pressure both ways.
"""

from __future__ import annotations

from io import BytesIO
from typing import Callable, Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import HTTPChannel, Request, datetimeToString
from twisted.web.resource import Resource
from zope.interface import implementer

from manualb.accesslog import AccessLog
from manualb.bodies import STILL, FileBody, StreamingBody
from manualb.web.channel import ConnectionLimit, Overloaded, buildChannel
from manualb.config import GatekeeperConfig
from manualb.exchange import Exchange
from manualb.forwarding import wantsUpgrade
from manualb.gatekeeper import TrustedProxies
from manualb.interfaces import IDownstream, IStage
from manualb.rules import SERVER_NAME, errorBody
from manualb.stages import defaultStages, requestView
from manualb.transports import cancelCall
from manualb.urlmap import URLMap
from manualb.view import clientHost

log = Logger()

# How long a request body is still read (and dropped) after its response has
# been sent, so that the client sees the response, not a reset.
LINGERING_TIME = 30.0


def errorPage(request: Request, code: int, title: bytes, detail: bytes) -> None:
    """
    Finish C{request} with a short HTML error page, or with no body when
    C{detail} is empty.
    """
    body = errorBody(code, title, detail) if detail else b""
    request.setResponseCode(code, title)
    request.responseHeaders.setRawHeaders(b"Server", [SERVER_NAME])
    if body:
        request.responseHeaders.setRawHeaders(
            b"Content-Type", [b"text/html; charset=utf-8"]
        )
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % (len(body),)])
    request.write(body)
    request.finish()




class StreamingRequest(server.Request):
    """
    A request whose body is streamed to the resource as it arrives, instead
    of being read whole first.

    Processing starts as soon as the headers are in.  The body arrives
    through L{body}; a response that ends before the body does still lets the
    rest of the body be read and dropped (for up to L{LINGERING_TIME}), so the
    client sees the response before the connection closes.
    """

    defaultContentType = None
    body: StreamingBody | None = None
    _finishPending = False
    _lingering = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A proxy passes form bodies on; it has no use for parsing them.
        self._parsePOSTFormSubmission = False

    def gotLength(self, length: int | None) -> None:
        requestLine = _requestLine(self.channel)
        if length == 0 or requestLine is None:
            super().gotLength(length)
            return
        self.content = BytesIO()
        gatekeeper = getattr(self.channel.site, "gatekeeper", None)
        limit = 0 if gatekeeper is None else gatekeeper.client_max_body_size
        self.body = StreamingBody(length, self._reader, limit)
        self.method, self.uri, self.clientproto = requestLine
        self.path = self.uri.split(b"?", 1)[0]
        self.args = {}
        self.process()

    def process(self) -> None:
        site = self.site = self.channel.site
        root = site.resource
        if self.path == b"*" or not (isinstance(site, ProxySite) and root.isLeaf):
            super().process()
            return
        # Twisted's own process, for the one leaf resource of a proxy: no
        # path segments decoded for a resource tree, no Server header of
        # Twisted's, and the date formatted once a second by the site's
        # clock rather than on every request by the wall clock.
        self.setHeader(b"Date", site.date())
        self.prepath = []
        self.postpath = []
        self.sitepath = []
        try:
            self.render(root)
        except BaseException:
            self.processingFailed(Failure())

    def _reader(self) -> IPushProducer:
        """
        What reads the body from the client: its connection; an HTTP/2
        stream, which has no transport of its own and pauses and resumes
        itself (withholding its WINDOW_UPDATE frames); or nothing to pause
        once the client is gone.
        """
        channel = self.channel
        if channel is None:
            return STILL
        return channel.transport or channel

    def _handleStar(self) -> None:
        # Twisted answers C{*} targets itself; the proxy answers them as its
        # own, and logs them.
        self.render(self.site.resource)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is None:
            super().handleContentChunk(data)
        else:
            self.body.dataReceived(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body is None:
            super().requestReceived(command, path, version)
            return
        self.body.allReceived()
        if self._finishPending:
            self._finishPending = False
            self._lingering = cancelCall(self._lingering)
            super().finish()

    def finish(self) -> None:
        body = self.body
        if body is None or body.complete or self._disconnected:
            super().finish()
            return
        body.discard()
        if not isinstance(self.channel, HTTPChannel):
            # An HTTP/2 stream ends on its own, leaving the connection's
            # other streams alone; the rest of its body is dropped as it
            # comes.
            super().finish()
            return
        # The response is complete before the request body: read the rest of
        # the body and drop it, then close the connection, since the client
        # may not be done sending when we answer.
        self.channel.persistent = False
        self._finishPending = True
        self._lingering = self.channel.callLater(LINGERING_TIME, self._stopLingering)

    def _stopLingering(self) -> None:
        self._lingering = None
        if self._finishPending and not self._disconnected:
            self._finishPending = False
            # Finishing lets go of the channel.
            transport = self.channel.transport
            super().finish()
            transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._lingering = cancelCall(self._lingering)
        super().connectionLost(reason)


def _requestLine(channel) -> tuple[bytes, bytes, bytes] | None:
    """
    The method, target and version of the request whose headers an
    HTTP/1.1 channel (or a L{manualb.web.http2.ProxyH2Stream}) has just read;
    C{None} where the channel is of another kind, whose requests are then
    read whole.
    """
    try:
        return channel._command, channel._path, channel._version
    except AttributeError:
        return None


class ProxySite(server.Site):
    """
    A L{Site} for a L{ProxyResource}: request bodies stream to the backend,
    and access logging is left to the proxy, which knows the upstream.

    @ivar hsts: The C{Strict-Transport-Security} value the proxy gives every
        response over TLS (in place of any the backend sends), or L{None}.
    @ivar gatekeeper: The limits each client connection is held to.
    @ivar connections: The count of open client connections against
        C{max_connections}; several sites of one balancer share it.
    @ivar trustedProxies: The C{trusted_proxies} of C{gatekeeper}, whose
        forwarding headers tell the client's address; L{None} when there
        are none (the client is the socket peer).
    """

    trustedProxies: TrustedProxies | None = None
    #: The C{Server} of the answers the front end makes itself.
    serverName = SERVER_NAME

    requestFactory = StreamingRequest
    protocol = buildChannel

    def __init__(
        self,
        resource,
        *args,
        hsts: bytes | None = None,
        gatekeeper: GatekeeperConfig = GatekeeperConfig(),
        connections: ConnectionLimit | None = None,
        **kwargs,
    ):
        super().__init__(resource, *args, **kwargs)
        self._dateSecond = -1
        self._date = b""
        self.hsts = hsts
        self.gatekeeper = gatekeeper
        if gatekeeper.trusted_proxies:
            self.trustedProxies = TrustedProxies(gatekeeper.trusted_proxies)
        if connections is None:
            connections = ConnectionLimit(gatekeeper.max_connections)
        self.connections = connections

    def buildProtocol(self, addr):
        connections = self.connections
        if connections.full:
            refusal = Overloaded()
            refusal.server = self.serverName
            return refusal
        protocol = super().buildProtocol(addr)
        connections.opened(protocol)
        return protocol

    def log(self, request: Request) -> None:
        # The proxy writes the line, with the upstream (see
        # _RequestDownstream.logTo).
        pass

    def date(self) -> bytes:
        """
        The C{Date} of a response sent now, by the site's reactor, which
        tells the time everywhere else too (timeouts, the access log);
        formatted once a second.
        """
        now = int(self.reactor.seconds())
        if now != self._dateSecond:
            self._dateSecond = now
            self._date = datetimeToString(now)
        return self._date

    def getResourceFor(self, request: Request):
        # Twisted dates the response by the wall clock.
        request.setHeader(b"Date", self.date())
        return super().getResourceFor(request)

    @property
    def accessLog(self) -> AccessLog | None:
        """
        Where the proxy logs requests, also those its channels refuse before
        they are read whole.
        """
        return getattr(self.resource, "accessLog", None)

    def acceptableProtocols(self) -> list[bytes]:
        """
        The protocols ALPN may choose: Twisted's (C{h2}, C{http/1.1}) and
        C{http/1.0}, which the channel serves as HTTP/1.x, for clients that
        offer only it (C{curl --http1.0}).
        """
        return super().acceptableProtocols() + [b"http/1.0"]


class ProxyResource(Resource):
    """
    The reverse proxy, as a leaf resource: every request below it passes
    the stage chain (L{stages}) and goes to a backend chosen by the URL map
    and the pool.

    @param urlMap: Routes requests, by host and path, to pools.
    @param reactor: Schedules timeouts and tells the time.
    @param accessLog: Where to write one line for each request, or L{None}.
        Only requests that come through a L{ProxySite} are written there;
        another L{server.Site} logs its requests itself, in its own format.
    @param stages: The stage chain, in order (see L{IStage}); by default
        L{defaultStages} of C{urlMap}.
    @param recent: Where each finished request's decision records go
        (C{manualb.admin.RecentRequests}), or L{None}.
    @param listener: The name of the listener it serves, for those records.
    @param metrics: Counts each finished request (C{manualb.metrics.Metrics}),
        or L{None}.

    @ivar stages: The stage chain each request passes; a stage may be added
        to it (see L{IStage}).
    """

    isLeaf = True

    def __init__(
        self,
        urlMap: URLMap,
        reactor: IReactorTime,
        accessLog: AccessLog | None = None,
        stages: Sequence[IStage] | None = None,
        recent=None,
        listener: str = "",
        metrics=None,
    ):
        super().__init__()
        self.urlMap = urlMap
        self.reactor = reactor
        self.accessLog = accessLog
        self.stages = list(defaultStages(urlMap) if stages is None else stages)
        self.recent = recent
        self.listener = listener
        self.metrics = metrics

    def render(self, request: Request):
        Exchange(
            _RequestDownstream(request),
            self.stages,
            self.reactor,
            self.accessLog,
            self.recent,
            self.listener,
            self.metrics,
        ).start()
        return server.NOT_DONE_YET


@implementer(IDownstream)
class _RequestDownstream:
    """
    The client's side of an exchange, on a twisted.web L{Request} (of
    HTTP/1.x, or of an HTTP/2 stream).
    """

    __slots__ = ("request", "view", "version", "refusal", "hsts")

    def __init__(self, request: Request):
        self.request = request
        request.defaultContentType = None
        # Twisted's own Server header; the exchange gives manualb's.
        request.responseHeaders.removeHeader(b"server")
        site = getattr(request, "site", None)
        headers = [
            (name, value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        client = peer = clientHost(request.getClientAddress())
        trusted = getattr(site, "trustedProxies", None)
        if trusted is not None:
            client = trusted.clientAddress(client, headers)
        self.view = requestView(
            client,
            request.isSecure(),
            request.method,
            request.uri,
            headers,
            clientHost(request.getHost()),
            trusted is not None and trusted.trusts(peer),
            site.reactor.seconds() if site is not None else 0.0,
        )
        self.version = request.clientproto
        self.refusal = getattr(request, "refusal", None)
        self.hsts = getattr(site, "hsts", None)

    @property
    def body(self):
        body = getattr(self.request, "body", None)
        if body is None:
            return FileBody(self.request.content)
        return body

    def mayUpgrade(self) -> bool:
        return _mayUpgrade(self.request)

    def whenGone(self, callback) -> None:
        self.request.notifyFinish().addErrback(callback)

    def startResponse(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        request = self.request
        request.setResponseCode(code, reason)
        add = request.responseHeaders.addRawHeader
        for name, value in headers:
            add(name, value)

    def write(self, data: bytes) -> None:
        self.request.write(data)

    def finish(self) -> None:
        self.request.finish()

    def breakOff(self) -> None:
        _breakOff(self.request)

    def abort(self) -> None:
        self.request.channel.transport.abortConnection()

    def closeAfterResponse(self) -> None:
        self.request.channel.persistent = False

    def registerProducer(self, producer: IPushProducer) -> None:
        self.request.registerProducer(producer, True)

    def unregisterProducer(self) -> None:
        self.request.unregisterProducer()

    def takeOver(self, protocol: Protocol) -> tuple[ITransport, bytes]:
        return _takeOver(self.request, protocol)

    def logTo(self, accessLog, status, upstreams, times, sent=None, passage=None) -> None:
        request = self.request
        if not isinstance(getattr(request, "site", None), ProxySite):
            # Mounted in a Site of the application's, which logs it.
            return
        if sent is None:
            sent = request.sentLength
        accessLog.record(self.view, self.version, status, sent, upstreams, times, passage)


_upgradeHookMissing: list[bool] = []


def _mayUpgrade(request: Request) -> bool:
    """
    Whether C{request} asks for a protocol upgrade that the proxy can carry
    out: from an HTTP/1.1 client on Twisted's HTTP/1.1 channel (HTTP/2 has
    no such upgrade), which must offer the hook that hands its connection
    over.
    """
    if request.clientproto != b"HTTP/1.1" or not wantsUpgrade(request.requestHeaders):
        return False
    channel = request.channel
    if not isinstance(channel, HTTPChannel):
        return False
    if not callable(getattr(channel, "_protocolUpgradeForWebsockets", None)):
        if not _upgradeHookMissing:
            _upgradeHookMissing.append(True)
            log.error(
                "This Twisted's HTTPChannel has no _protocolUpgradeForWebsockets: "
                "WebSocket and other upgrades cannot be proxied; such requests "
                "go to the backend without their Upgrade header"
            )
        return False
    return True


def _takeOver(request: Request, protocol: Protocol) -> tuple[ITransport, bytes]:
    """
    Take the client's connection over from the HTTP channel: from now on
    C{protocol} gets what the client sends, and the channel's timeouts no
    longer apply.

    @return: The client's transport, and what the client sent after the
        request that the channel had kept for the next request.
    """
    channel = request.channel
    transport = channel.transport
    # The channel's idle timeout is off while it handles a request; it comes
    # back when the request is done, which this one never is.
    stopTimeout = getattr(channel, "stopTimeout", None)
    if stopTimeout is None:
        channel.setTimeout(None)
    else:
        stopTimeout()
    channel._savedTimeOut = None
    early = b"".join(getattr(channel, "_dataBuffer", ()))
    channel._dataBuffer = []
    # The channel registered itself with the transport as its producer.
    networkProducer = getattr(channel, "_networkProducer", None)
    if networkProducer is not None:
        networkProducer.unregisterProducer()
    channel._protocolUpgradeForWebsockets(protocol)
    return transport, early


def _breakOff(request: Request) -> None:
    """
    End a response that cannot be completed so that the client cannot take
    the truncated body for a whole one.

    When the body is framed (chunked, or with a Content-Length), what was
    sent still goes out and the connection then closes with the framing
    unfinished; a body delimited by the close itself ends with a reset.  An
    HTTP/2 stream is reset (RST_STREAM), leaving the connection's other
    streams alone.
    """
    if request.transport is None:
        request.channel.abortConnection()
        return
    framed = request.chunked or request.responseHeaders.hasHeader(b"content-length")
    request.channel.persistent = False
    if framed:
        request.transport.loseConnection()
    else:
        request.transport.abortConnection()


@implementer(IProtocolNegotiationFactory)
class _Entry(ServerFactory):
    """
    The factory a listening port serves with: it hands each connection to
    the factory it serves now, which a reload may change without rebinding
    the port.  Started and stopped with the port, it starts and stops the
    factories it serves.
    """

    noisy = False

    def __init__(self, target: Factory | None) -> None:
        self.target = target

    def serveWith(self, target: Factory) -> None:
        if target is self.target:
            return
        old, self.target = self.target, target
        if self.numPorts:
            target.doStart()
            if old is not None:
                old.doStop()

    def startFactory(self) -> None:
        if self.target is not None:
            self.target.doStart()

    def stopFactory(self) -> None:
        if self.target is not None:
            self.target.doStop()

    def buildProtocol(self, addr):
        return self.target.buildProtocol(addr)

    def logPrefix(self) -> str:
        # The port's "... starting on PORT" line names what it serves.
        target = self.target
        if target is None:
            return "-"
        return getattr(target, "logPrefix", lambda: target.__class__.__name__)()

    def acceptableProtocols(self) -> list[bytes]:
        negotiation = IProtocolNegotiationFactory(self.target, None)
        return [] if negotiation is None else negotiation.acceptableProtocols()


class _Listening(StreamServerEndpointService):
    """
    Listens on one endpoint, made when the service starts (reading any
    certificates it needs) or when first asked for.

    @ivar port: The port it listens on, once bound; else L{None}.
    """

    def __init__(
        self, makeEndpoint: Callable[[], IStreamServerEndpoint], factory: Factory | None
    ):
        self._entry = _Entry(factory)
        super().__init__(None, self._entry)
        self._makeEndpoint = makeEndpoint
        # As strports.service does: a port that cannot be bound stops start-up.
        self._raiseSynchronously = True
        self.port: IListeningPort | None = None

    @property
    def serving(self) -> Factory | None:
        """
        The factory that new connections get.
        """
        return self._entry.target

    def serveWith(self, factory: Factory) -> None:
        """
        Serve the connections accepted from now on with C{factory}; those
        open keep theirs.
        """
        self._entry.serveWith(factory)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()

        def bound(port):
            self.port = port
            return port

        self._waitingForPort.addCallback(bound)

    @property
    def endpoint(self) -> IStreamServerEndpoint:
        if self._endpoint is None:
            self._endpoint = self._makeEndpoint()
        return self._endpoint

    @endpoint.setter
    def endpoint(self, endpoint: IStreamServerEndpoint | None) -> None:
        self._endpoint = endpoint


def listening(
    makeEndpoint: Callable[[], IStreamServerEndpoint], factory: Factory | None, name: str
) -> IService:
    """
    A service named C{name} that listens with C{factory} on the endpoint
    C{makeEndpoint} makes when the service starts.  Its C{serveWith(factory)}
    changes the factory that new connections get, without rebinding; a
    service made with no factory must be given one before the reactor next
    runs, when connections may arrive; C{serving} is the one it has.
    """
    service = _Listening(makeEndpoint, factory)
    service.setName(name)
    return service


def sslContextFactory(endpoint: IStreamServerEndpoint):
    """
    The context factory of an C{ssl:} server endpoint, or L{None} for an
    endpoint of another kind.
    """
    return getattr(endpoint, "_sslContextFactory", None)
