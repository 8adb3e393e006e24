"""
Helpers for testing code that runs behind, or in front of, manualb: small
backends that say who they are, a quick way to build a configuration, and
L{MemoryBalancer}, a balancer driven in memory through an L{IAgent} with
L{twisted.web.resource.IResource}s as its backends.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import sys
from io import BytesIO
from typing import Mapping, Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, ISSLTransport, IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import directlyProvides, implementer

from manualb.front import serving
from manualb.accesslog import AccessLog
from manualb.config import Config
from manualb.configfile import parseConfig
from manualb.service import LoadBalancer
from manualb.state import RedisURL, parseStateURL
from manualb.termination import isTLS


class NamedBackend(Resource):
    """
    A backend that answers every request with its own name, and remembers
    the requests it saw (method, URI and headers) for tests to inspect.
    """

    isLeaf = True

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.requests: list = []

    def render(self, request):
        self.requests.append(
            (request.method, request.uri, request.requestHeaders.copy())
        )
        body = self.name.encode("utf-8") + b"\n"
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Backend", self.name.encode("utf-8"))
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return b"" if request.method == b"HEAD" else body


# -- a backend that keeps shopping carts ---------------------------------------

#: The name of the cookie a L{CartBackend} keeps its session in.
CART_COOKIE = b"cart"
#: At most this many items in a cart, and characters in an item.
CART_MAX_ITEMS = 100
CART_MAX_ITEM = 100
#: At most this many carts a L{MemoryCarts} keeps: the oldest goes first.
CART_MAX_SESSIONS = 10000
#: How long, in seconds, a cart in Redis is kept after its last change.
CART_EXPIRY = 3600
#: How long, in seconds, a connection to Redis or a command may take.
CART_TIMEOUT = 1.0


class CartFull(Exception):
    """
    The cart holds L{CART_MAX_ITEMS} items already.
    """


class MemoryCarts:
    """
    Shopping carts in this process's memory: each backend process has its
    own, and they die with it.
    """

    description = "memory"

    def __init__(self) -> None:
        self._carts: dict[str, list[str]] = {}

    def add(self, session: str, item: str) -> Deferred[list[str]]:
        """
        Put C{item} in the cart of C{session}; fires with the cart.

        @raise CartFull: (in the L{Deferred}) when it holds too many items.
        """
        cart = self._carts.pop(session, [])
        self._carts[session] = cart
        if len(cart) >= CART_MAX_ITEMS:
            return fail(CartFull())
        cart.append(item)
        while len(self._carts) > CART_MAX_SESSIONS:
            del self._carts[next(iter(self._carts))]
        return succeed(list(cart))

    def items(self, session: str) -> Deferred[list[str]]:
        """
        The cart of C{session}, empty when it has none.
        """
        return succeed(list(self._carts.get(session, [])))

    def close(self) -> Deferred[None]:
        return succeed(None)


_CART_ADD = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return false end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('LRANGE', KEYS[1], 0, -1)
"""


class RedisCarts:
    """
    Shopping carts in a Redis, which every backend naming it shares: one
    list under C{manualb:cart:SESSION} per cart, kept for L{CART_EXPIRY}
    seconds after its last change.  One connection, made when first needed
    and made again after it is lost; every command is bounded by
    C{timeout}, after which the connection is dropped.

    @ivar url: Where the Redis is (a L{manualb.state.RedisURL}).
    """

    prefix = "manualb:cart:"

    def __init__(self, reactor, url: RedisURL, timeout: float = CART_TIMEOUT):
        self.reactor = reactor
        self.url = url
        self.description = str(url)
        self.timeout = timeout
        self._protocol = None
        self._connecting: list[Deferred] | None = None
        self._attempt: Deferred | None = None
        self._closed = False

    def add(self, session: str, item: str) -> Deferred[list[str]]:
        d = self._call("EVAL", _CART_ADD, 1, self.prefix + session, item, CART_MAX_ITEMS, CART_EXPIRY)

        def added(cart):
            if cart is None:
                raise CartFull()
            return list(cart)

        return d.addCallback(added)

    def items(self, session: str) -> Deferred[list[str]]:
        return self._call("LRANGE", self.prefix + session, 0, -1).addCallback(list)

    def close(self) -> Deferred[None]:
        """
        Drop the connection, and any being made; fires once it is closed.
        Commands fail from then on.
        """
        self._closed = True
        if self._attempt is not None:
            self._attempt.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return succeed(None)
        lost = protocol.lost
        protocol.transport.abortConnection()
        return lost

    def _connect(self) -> Deferred:
        """
        Fires with a connection to the Redis, ready for commands.
        """
        if self._closed:
            return fail(ConnectionError("the carts in %s are closed" % (self.description,)))
        if self._protocol is not None and self._protocol.transport is not None:
            return succeed(self._protocol)
        waiting: Deferred = Deferred()
        if self._connecting is not None:
            self._connecting.append(waiting)
            return waiting
        self._connecting = [waiting]
        url = self.url
        protocol = _cartConnection()(self)
        endpoint = HostnameEndpoint(self.reactor, url.host, url.port, timeout=self.timeout)
        d = connectProtocol(endpoint, protocol)
        if url.password is not None:
            d.addCallback(lambda ignored: protocol.auth(url.password, url.username))
        if url.db:
            d.addCallback(lambda ignored: protocol.select(url.db))
        d.addTimeout(2 * self.timeout, self.reactor)
        self._attempt = d

        def done(result):
            waiters, self._connecting, self._attempt = self._connecting or [], None, None
            if self._closed and not isinstance(result, Failure):
                result = Failure(ConnectionError("closed while connecting"))
            if isinstance(result, Failure):
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
                for each in waiters:
                    each.errback(result)
            else:
                self._protocol = protocol
                for each in waiters:
                    each.callback(protocol)

        d.addBoth(done)
        return waiting

    def _call(self, *command) -> Deferred:
        """
        Run C{command} within the timeout: one that takes longer drops the
        connection.
        """

        def run(protocol):
            d = protocol.execute_command(*command)
            d.addTimeout(self.timeout, self.reactor)

            def failed(reason):
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
                return reason

            return d.addErrback(failed)

        return self._connect().addCallback(run)


_connectionClass: list = []


def _cartConnection():
    """
    The class of a L{RedisCarts}'s connection, a txredisapi protocol that
    tells its carts when it is lost.  Made when first needed: importing
    txredisapi imports the global reactor.
    """
    if not _connectionClass:
        from txredisapi import RedisProtocol

        class CartConnection(RedisProtocol):
            def __init__(self, carts: RedisCarts):
                super().__init__(charset="utf-8", convertNumbers=False)
                self.carts = carts
                self.callLater = carts.reactor.callLater
                self.lost: Deferred[None] = Deferred()

            def connectionLost(self, why):
                super().connectionLost(why)
                if self.carts._protocol is self:
                    self.carts._protocol = None
                if not self.lost.called:
                    self.lost.callback(None)

        _connectionClass.append(CartConnection)
    return _connectionClass[0]


def cartStore(reactor, cart: str) -> MemoryCarts | RedisCarts:
    """
    Where a L{CartBackend} keeps its carts, from the value of C{python -m
    manualb backend --cart}: C{memory}, or C{redis://HOST:PORT/DB}.

    @raise ValueError: When C{cart} is neither, saying why.
    """
    url = parseStateURL(cart)
    return MemoryCarts() if url is None else RedisCarts(reactor, url)


class CartBackend(NamedBackend):
    """
    A L{NamedBackend} that also keeps a shopping cart for each client:
    C{POST /cart/add?item=ITEM} puts an item in it and C{GET /cart} shows
    it, both answering with JSON, C{{"backend": NAME, "cart": [ITEM, ...]}}.
    The cart is found by a session cookie (L{CART_COOKIE}), which the
    backend sets when the request has none (or a malformed one); where the
    carts are kept, in this process's memory or in a Redis that other
    backends share, is its C{store}'s business.

    @ivar store: A L{MemoryCarts} or a L{RedisCarts}.
    """

    def __init__(self, name: str, store: MemoryCarts | RedisCarts):
        super().__init__(name)
        self.store = store

    def render(self, request):
        path = request.path.rstrip(b"/")
        if path == b"/cart/add":
            allowed = b"POST"
        elif path == b"/cart":
            allowed = b"GET, HEAD"
        else:
            return super().render(request)
        self.requests.append((request.method, request.uri, request.requestHeaders.copy()))
        if request.method not in allowed.split(b", "):
            request.setHeader(b"Allow", allowed)
            return self._answer(request, 405, {"error": "use " + allowed.decode("ascii")})
        session = self._session(request)
        if path == b"/cart":
            d = self.store.items(session)
        else:
            item = request.args.get(b"item", [b""])[0].decode("utf-8", "replace").strip()
            if not item or len(item) > CART_MAX_ITEM:
                error = "give the item to add as ?item=NAME, of 1 to %d characters"
                return self._answer(request, 400, {"error": error % (CART_MAX_ITEM,)})
            d = self.store.add(session, item)
        gone: list = []
        request.notifyFinish().addErrback(gone.append)

        def answered(cart):
            return 200, {"cart": cart}

        def failed(reason):
            if reason.check(CartFull):
                return 409, {"error": "the cart is full (%d items)" % (CART_MAX_ITEMS,)}
            return 503, {"error": "the carts in %s cannot be reached: %s"
                         % (self.store.description, reason.getErrorMessage() or
                            reason.type.__name__)}

        def respond(result):
            if not gone:
                request.write(self._answer(request, *result))
                request.finish()

        d.addCallbacks(answered, failed).addCallback(respond)
        return NOT_DONE_YET

    def _session(self, request) -> str:
        """
        The session of C{request}, from its cookie; a new one, set as its
        cookie, when it has none.
        """
        session = request.getCookie(CART_COOKIE)
        if session is not None and re.fullmatch(rb"[0-9a-f]{32}", session):
            return session.decode("ascii")
        session = secrets.token_hex(16)
        request.addCookie(CART_COOKIE, session.encode("ascii"), path=b"/", httpOnly=True)
        return session

    def _answer(self, request, code: int, answer: dict) -> bytes:
        request.setResponseCode(code)
        body = json.dumps({"backend": self.name, **answer}).encode("utf-8") + b"\n"
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Backend", self.name.encode("utf-8"))
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return b"" if request.method == b"HEAD" else body


def listenBackend(
    reactor, resource: Resource, interface: str = "127.0.0.1"
) -> Deferred[IListeningPort]:
    """
    Serve C{resource} over HTTP on a free port of C{interface}.
    """
    return TCP4ServerEndpoint(reactor, 0, interface=interface).listen(Site(resource))


def runBackend(
    name: str,
    port: int = 0,
    interface: str = "127.0.0.1",
    exitOnEOF: bool = False,
    cart: str = "memory",
) -> None:
    """
    Run a L{CartBackend} in this process until it is killed, after
    printing C{listening on HOST:PORT} (handy with C{port=0}).  This is what
    C{python -m manualb backend NAME} runs: a backend process to stop and
    start under a balancer.

    @param cart: Where it keeps its shopping carts (see L{cartStore}):
        C{memory} or C{redis://HOST:PORT/DB}.

    @param exitOnEOF: Also stop when standard input closes: a parent that
        runs the backend (L{BackendProcess}) takes it along when it goes, even
        when it was killed too hard to stop its children.
    """
    from twisted.internet import reactor

    def listening(port: IListeningPort) -> None:
        sys.stdout.write("listening on %s\n" % (serverAddress(port),))
        sys.stdout.flush()

    def failed(reason) -> None:
        sys.stderr.write("backend %s: %s\n" % (name, reason.getErrorMessage()))
        reactor.stop()

    store = cartStore(reactor, cart)
    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)
    endpoint.listen(Site(CartBackend(name, store))).addCallbacks(listening, failed)
    if exitOnEOF:
        StandardIO(_ExitOnEOF(reactor), stdout=os.open(os.devnull, os.O_WRONLY))
    reactor.run()


class _ExitOnEOF(Protocol):
    """
    Stops the reactor when standard input closes.
    """

    def __init__(self, reactor):
        self.reactor = reactor

    def connectionLost(self, reason=None):
        if self.reactor.running:
            self.reactor.stop()


class BackendProcess(ProcessProtocol):
    """
    A L{CartBackend} in a child process (C{python -m manualb backend}),
    for tests and demos that kill a backend for real and start it again.

    @ivar address: C{host:port} once started.
    @ivar cart: Where it keeps its carts: C{memory} or C{redis://...}.
    """

    def __init__(self, reactor, name: str, port: int = 0, cart: str = "memory"):
        self.reactor = reactor
        self.name = name
        self.port = port
        self.cart = cart
        self.address: str | None = None
        self._started: Deferred[str] | None = None
        self._ended: Deferred[None] | None = None
        self._output = b""

    def start(self) -> Deferred[str]:
        """
        Start the process; fires with its address once it listens.  Started
        again after L{kill}, it listens on the same port.
        """
        import manualb

        self._started = Deferred()
        self._ended = Deferred()
        self._output = b""
        if self.address is not None:
            self.port = int(self.address.rsplit(":", 1)[1])
        source = os.path.dirname(os.path.dirname(os.path.abspath(manualb.__file__)))
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [source, environment.get("PYTHONPATH")])
        )
        self.reactor.spawnProcess(
            self,
            sys.executable,
            [
                sys.executable, "-m", "manualb", "backend", self.name,
                "--port", str(self.port), "--exit-on-eof", "--cart", self.cart,
            ],
            env=environment,
        )
        return self._started

    def kill(self) -> Deferred[None]:
        """
        Kill the process with SIGKILL, as a crash would; fires once it is gone.
        """
        ended = self._ended
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess("KILL")
        return ended

    def outReceived(self, data: bytes) -> None:
        self._output += data
        if self._started is not None and b"\n" in self._output:
            line = self._output.split(b"\n", 1)[0].decode("utf-8", "replace")
            started, self._started = self._started, None
            if line.startswith("listening on "):
                self.address = line[len("listening on ") :]
                started.callback(self.address)
            else:
                started.errback(RuntimeError(line))

    def errReceived(self, data: bytes) -> None:
        self._output += data

    def processEnded(self, reason) -> None:
        if self._started is not None:
            started, self._started = self._started, None
            started.errback(RuntimeError(self._output.decode("utf-8", "replace")))
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)


def serverAddress(port: IListeningPort) -> str:
    """
    The C{host:port} of a listening port, as a C{servers} line takes it.
    """
    address = port.getHost()
    return "%s:%d" % (address.host, address.port)


def balancerConfig(
    servers: Sequence[str],
    listen: Sequence[str] = ("tcp:0:interface=127.0.0.1",),
    upstream: str = "backends",
    accessLog: str = "off",
    gatekeeper: Mapping[str, str] | None = None,
    **upstreamOptions: str,
) -> Config:
    """
    A configuration with one pool of C{servers} behind one route for C{/}.

    @param gatekeeper: Keys of a C{[gatekeeper]} section, such as
        C{{"send_timeout": "5s"}}.
    @param upstreamOptions: More keys of the C{[upstream]} section, such as
        C{read_timeout="2s"}.
    """
    lines = ["[manualb]", "listen ="]
    lines += ["    " + endpoint for endpoint in listen]
    lines += ["access_log = " + accessLog, ""]
    if gatekeeper:
        lines += ["[gatekeeper]"] + ["%s = %s" % item for item in gatekeeper.items()]
        lines += [""]
    lines += ["[upstream %s]" % (upstream,), "servers ="]
    lines += ["    " + server for server in servers]
    lines += ["%s = %s" % item for item in upstreamOptions.items()]
    lines += ["", "[route default]", "path = /", "upstream = " + upstream]
    return parseConfig("\n".join(lines) + "\n", "<test>")


class _Body(Protocol):
    def __init__(self, done: Deferred[bytes]):
        self.done = done
        self.data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.data))
        else:
            self.done.errback(reason)


def responseBody(response: IResponse) -> Deferred[bytes]:
    """
    The whole body of C{response}, as L{twisted.web.client.readBody} gives
    it, without its warning about transports that cannot be aborted.
    """
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done))
    return done


class MemoryPeer:
    """
    One end of an in-memory connection to the balancer: a client, or a
    backend the balancer connected to.

    @ivar transport: What the balancer writes to this peer lands here.
    @ivar protocol: The balancer's protocol for this connection.
    """

    def __init__(self, protocol, transport: StringTransportWithDisconnection):
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        """
        Send C{data} to the balancer.
        """
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """
        Everything the balancer sent since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def connected(self) -> bool:
        """
        Whether the balancer keeps this connection open.
        """
        return self.transport.connected and not self.transport.disconnecting

    def close(self) -> None:
        """
        Close the connection cleanly from this side.
        """
        self.transport.loseConnection()

    def reset(self) -> None:
        """
        Drop the connection abruptly from this side.
        """
        if self.transport.connected:
            self.transport.connected = False
            self.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))


@implementer(IStreamClientEndpoint)
class _ToBalancer:
    """
    Where the in-memory agent connects: one of the balancer's sites.
    """

    def __init__(self, balancer: "MemoryBalancer", listener: str | None, tls: bool, host: str):
        self._balancer = balancer
        self._listener = listener
        self._tls = tls
        self._host = host

    def connect(self, factory) -> Deferred:
        balancer = self._balancer
        site = balancer._siteFor(self._listener, self._tls)
        address = IPv4Address("TCP", self._host, next(balancer._ports))
        local = IPv4Address("TCP", "127.0.0.1", 443 if self._tls else 80)
        protocol = factory.buildProtocol(local)
        balancer._wire(site.buildProtocol(address), protocol, local, address, self._tls)
        return succeed(protocol)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, balancer: "MemoryBalancer", listener: str | None, host: str):
        self._balancer = balancer
        self._listener = listener
        self._host = host

    def endpointForURI(self, uri) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported("unsupported scheme: %r" % (uri.scheme,))
        return _ToBalancer(self._balancer, self._listener, uri.scheme == b"https", self._host)


@implementer(IAgent)
class _MemoryAgent:
    """
    An L{IAgent} whose requests go to a L{MemoryBalancer}, over in-memory
    connections kept alive between requests, as a browser's would be.
    """

    def __init__(self, balancer: "MemoryBalancer", listener: str | None, host: str):
        self._balancer = balancer
        self._agent = Agent.usingEndpointFactory(
            balancer.reactor,
            _Endpoints(balancer, listener, host),
            pool=HTTPConnectionPool(balancer.reactor, persistent=True),
        )

    def request(self, method, uri, headers=None, bodyProducer=None) -> Deferred:
        d = self._agent.request(method, uri, headers, bodyProducer)
        self._balancer.flush()
        return d


class MemoryBackend:
    """
    A backend server the balancer reaches in memory: the balancer's
    connections to C{address} are served by a L{Site} over C{resource}.

    @ivar address: C{host:port}, as the C{servers} line of the
        configuration gives it.
    @ivar resource: What answers the requests.
    @ivar site: The L{Site} serving C{resource}.
    @ivar connectionsMade: How many connections the balancer has opened to
        it: a kept-alive connection that is reused does not count again.
    @ivar openConnections: How many of them are open now.
    """

    def __init__(self, address: str, resource: IResource, reactor):
        self.address = address
        self.resource = resource
        self.site = Site(resource, reactor=reactor)
        self.connectionsMade = 0
        self._pumps: list[iosim.IOPump] = []

    @property
    def openConnections(self) -> int:
        return sum(
            1
            for pump in self._pumps
            if not (pump.clientIO.disconnected and pump.serverIO.disconnected)
        )


class MemoryBalancer:
    """
    A load balancer driven entirely in memory, for unit tests: no socket is
    opened and time moves only when the test says so.

    The client side is an L{IAgent} (L{agent}); the backends are
    L{twisted.web.resource.IResource}s (L{addBackend}) served in memory.
    Bytes move between the balancer and its peers when L{flush} is called
    (L{IAgent.request} flushes once itself, so that a request to a backend
    that answers at once has its response).  One clock, C{reactor}, tells
    the time everywhere: the responses' C{Date}, the access log, every
    timeout; L{advance} moves it.

    The lower-level API speaks raw bytes: L{client} connects a
    L{MemoryPeer} to the balancer, and a connection to an address with no
    backend waits (L{pendingConnections}) until the test accepts it as a
    L{MemoryPeer} (L{acceptConnection}) or refuses it
    (L{refuseConnection}).

    @ivar reactor: The clock and reactor of the balancer and its peers.
    @ivar accessLog: The access log lines written so far, in a L{BytesIO}.
    @ivar balancer: The L{LoadBalancer} under test.
    @ivar backends: The L{MemoryBackend}s, by address.
    """

    def __init__(
        self, config: Config, reactor: MemoryReactorClock | None = None, stateStore=None
    ):
        """
        @param stateStore: The L{manualb.interfaces.IStateStore} of the
            state it shares with other balancers (a
            L{manualb.state.MemoryStateStore}), or L{None}.
        """
        self.reactor = MemoryReactorClock() if reactor is None else reactor
        self.accessLog = BytesIO()
        self.balancer = LoadBalancer(
            config,
            self.reactor,
            AccessLog(self.accessLog, clock=self.reactor.seconds),
            stateStore=stateStore,
        )
        self.balancer.start()
        self.backends: dict[str, MemoryBackend] = {}
        self._pumps: list[iosim.IOPump] = []
        self._ports = itertools.count(50001)

    def addBackend(self, address: str, resource: IResource) -> MemoryBackend:
        """
        Serve the balancer's connections to C{address} (C{host:port}, as in
        the configuration) with C{resource}.
        """
        backend = MemoryBackend(address, resource, self.reactor)
        self.backends[address] = backend
        return backend

    def agent(self, listener: str | None = None, clientHost: str = "127.0.0.1") -> IAgent:
        """
        An L{IAgent} whose requests go to the balancer through C{listener}
        (the name of a C{[listener NAME]}, C{default} for C{[manualb]}): only
        that listener's routes answer them.  By default the first listener,
        or every route when the configuration has none (as an embedder
        mounts L{LoadBalancer.resource}).  The host and port in the URL are
        sent as C{Host} and otherwise ignored; C{https} URLs arrive as over
        TLS.

        @param clientHost: The address the balancer sees the client at.
        """
        return _MemoryAgent(self, listener, clientHost)

    def flush(self) -> None:
        """
        Move every byte waiting in either direction between the balancer and
        its clients and backends, connect the balancer to the backends of
        L{addBackend} it is connecting to, and run what is due now, until
        nothing moves.
        """
        while True:
            moved = self._connectBackends()
            self.reactor.advance(0)
            for pump in list(self._pumps):
                if pump.flush(advanceClock=False):
                    moved = True
            self._pumps = [
                pump
                for pump in self._pumps
                if not (pump.clientIO.disconnected and pump.serverIO.disconnected)
            ]
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        """
        Move the clock C{seconds} on, then L{flush}.
        """
        self.reactor.advance(seconds)
        self.flush()

    def close(self) -> Deferred[None]:
        """
        Close the balancer (L{LoadBalancer.close}) and flush, so that its
        connections close.
        """
        d = self.balancer.close()
        self.flush()
        return d

    def _siteFor(self, listener: str | None, tls: bool):
        config = self.balancer.config
        if listener is None:
            if not config.listeners:
                return serving(self.balancer.site, config.front_end)
            listener = config.listeners[0].name
        [chosen] = [each for each in config.listeners if each.name == listener]
        for description in chosen.listen:
            if isTLS(description) == tls:
                return self.balancer.factoryFor(chosen, description)
        return serving(self.balancer.sites[chosen.name], chosen.front_end or config.front_end)

    def _wire(self, server, client, serverAddress, clientAddress, tls=False) -> iosim.IOPump:
        serverIO = iosim.FakeTransport(
            server, isServer=True, hostAddress=serverAddress, peerAddress=clientAddress
        )
        clientIO = iosim.FakeTransport(
            client, isServer=False, hostAddress=clientAddress, peerAddress=serverAddress
        )
        if tls:
            directlyProvides(serverIO, ISSLTransport)
            directlyProvides(clientIO, ISSLTransport)
        pump = iosim.connect(server, serverIO, client, clientIO, greet=False)
        self._pumps.append(pump)
        return pump

    def _connectBackends(self) -> bool:
        connected = False
        for index in reversed(range(len(self._attempts()))):
            host, port = self.pendingConnections()[index]
            backend = self.backends.get("%s:%d" % (host, port))
            if backend is None:
                continue
            host, port, factory, timeout, bindAddress = self._takeAttempt(index)
            address = IPv4Address("TCP", host, port)
            local = IPv4Address("TCP", "127.0.0.1", next(self._ports))
            server = backend.site.buildProtocol(local)
            backend._pumps.append(self._wire(server, factory.buildProtocol(address), address, local))
            backend.connectionsMade += 1
            connected = True
        return connected

    def client(
        self, host: str = "127.0.0.1", port: int = 50000, listener: str | None = None
    ) -> MemoryPeer:
        """
        Connect a new client to the balancer, through C{listener} (see
        L{agent}), speaking raw bytes.
        """
        address = IPv4Address("TCP", host, port)
        protocol = self._siteFor(listener, False).buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return MemoryPeer(protocol, transport)

    def _attempts(self) -> list[int]:
        """
        The indexes in the reactor's log of the connection attempts still
        pending: not accepted, refused or given up.
        """
        return [
            index
            for index, connector in enumerate(self.reactor.connectors)
            if not connector.stoppedConnecting
        ]

    def pendingConnections(self) -> list[tuple[str, int]]:
        """
        The backend addresses the balancer is connecting to, oldest first.
        """
        return [self.reactor.tcpClients[index][:2] for index in self._attempts()]

    def _takeAttempt(self, index: int):
        position = self._attempts()[index]
        self.reactor.connectors[position].stoppedConnecting = True
        return self.reactor.tcpClients[position]

    def acceptConnection(self, index: int = 0) -> MemoryPeer:
        """
        Let a pending backend connection succeed; the returned peer plays
        the backend.
        """
        host, port, factory, timeout, bindAddress = self._takeAttempt(index)
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return MemoryPeer(protocol, transport)

    def refuseConnection(self, index: int = 0) -> None:
        """
        Let a pending backend connection fail as refused.
        """
        host, port, factory, timeout, bindAddress = self._takeAttempt(index)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
