"""
The edge as a configuration builds it, over real sockets: TLS listeners
chosen by SNI, the redirect to https, HSTS, host and path routing, route
sets per listener, TLS to backends, and TCP streams.
"""

import os
import ssl
from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.server import Site

from zope.interface import implementer

from manualb.front import siteOf
from manualb.accesslog import AccessLog
from manualb.configfile import parseConfig
from manualb.view import Passage
from manualb.web import ProxySite
from manualb.service import LoadBalancer, makeService
from manualb.stages import RedirectToHTTPS, requestView
from manualb.termination import SNIServerEndpoint
from manualb.testing import NamedBackend, listenBackend, serverAddress
from manualb.tlstesting import makeCA, writeCA, writeTLSFiles


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self, expected: int):
        self.expected = expected
        self.data = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= self.expected and not self.done.called:
            self.done.callback(self.data)


class RawClient(Protocol):
    """
    Sends C{request} once connected, and keeps what comes back; C{lost}
    fires when the connection closes.
    """

    def __init__(self, request: bytes):
        self.request = request
        self.data = b""
        self.lost = Deferred()
        self._waiting = None

    def connectionMade(self):
        self.transport.write(self.request)

    def waitFor(self, ending: bytes):
        """
        Fires once what came back ends with C{ending}.
        """
        if self.data.endswith(ending):
            return succeed(None)
        self._waiting = (ending, Deferred())
        return self._waiting[1]

    def dataReceived(self, data):
        self.data += data
        if self._waiting is not None and self.data.endswith(self._waiting[0]):
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(None)

    def connectionLost(self, reason=None):
        self.lost.callback(None)


def httpsGet(port: int, name: str, caPath: str, path: str = "/") -> tuple[str, bytes, str]:
    """
    A blocking HTTPS GET with Python's ssl module: the certificate's common
    name, the raw response, and the negotiated protocol version.
    """
    context = ssl.create_default_context(cafile=caPath)
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            tls.sendall(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                % (path.encode(), name.encode())
            )
            response = b""
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                response += data
            return subject.get("commonName", ""), response, tls.version()


class EdgeTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.ca = makeCA("manualb edge test CA")
        self.caPath = writeCA(self.directory, self.ca)
        self.www = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        self.api = writeTLSFiles(self.directory, self.ca, ["*.api.example.com"])
        self.shop = yield self.backend(NamedBackend("shop"))
        self.api1 = yield self.backend(NamedBackend("api"))
        self.static = yield self.backend(NamedBackend("static"))

    @inlineCallbacks
    def backend(self, resource, tls=None):
        if tls is None:
            port = yield listenBackend(reactor, resource)
        else:
            port = reactor.listenSSL(0, Site(resource), tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return serverAddress(port)

    def balancer(self, text: str) -> LoadBalancer:
        config = parseConfig(text, os.path.join(self.directory, "lb.ini"))
        balancer = LoadBalancer(config, reactor)
        balancer.start()
        self.addCleanup(balancer.close)
        return balancer

    @inlineCallbacks
    def listen(self, balancer, listener: str, description: str) -> int:
        listenerConfig = {l.name: l for l in balancer.config.listeners}[listener]
        port = yield balancer.endpoint(description).listen(
            balancer.factoryFor(listenerConfig, description)
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def edgeConfig(self) -> str:
        return f"""
[manualb]
listen =
    tcp:0:interface=127.0.0.1
    sni:0:interface=127.0.0.1
access_log = off
redirect_https = 8443

[listener internal]
listen = tcp:0:interface=127.0.0.1
routes = static

[tls]
certificates =
    www.example.com   {self.www[0]} {self.www[1]}
    *.api.example.com {self.api[0]} {self.api[1]}
hsts = max-age=31536000

[upstream shop]
servers = {self.shop}
[upstream api]
servers = {self.api1}
[upstream static]
servers = {self.static}

[route shop]
host = www.example.com
path = /
upstream = shop

[route api]
host = *.api.example.com
path = /
upstream = api

[route static]
path = ^~ /static/
strip_prefix = on
upstream = static

[route exact]
path = = /health
upstream = api
"""

    @inlineCallbacks
    def test_sniRoutingAndHSTS(self):
        """
        Over TLS, each name gets its certificate and its route; an unknown
        name gets the first certificate and the routes without a host; the
        backend learns the request came over https; HSTS is sent.
        """
        balancer = self.balancer(self.edgeConfig())
        port = yield self.listen(balancer, "default", "sni:0:interface=127.0.0.1")
        name, response, version = yield deferToThread(
            httpsGet, port, "www.example.com", self.caPath
        )
        self.assertEqual(name, "www.example.com")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertTrue(response.endswith(b"\r\n\r\nshop\n"), response)
        self.assertIn(b"\r\nStrict-Transport-Security: max-age=31536000\r\n", response)
        name, response, version = yield deferToThread(
            httpsGet, port, "v1.api.example.com", self.caPath
        )
        self.assertEqual(name, "*.api.example.com")
        self.assertTrue(response.endswith(b"\r\n\r\napi\n"), response)

    @inlineCallbacks
    def test_twistedTLSClient(self):
        """
        Twisted's own TLS client, verifying the certificate for the name it
        asks for, gets through to that name's route.  (Twisted's client
        speaks HTTP/1.1 only; h2 is tested with the h2 package's client in
        test_termination.)
        """
        balancer = self.balancer(self.edgeConfig())
        port = yield self.listen(balancer, "default", "sni:0:interface=127.0.0.1")
        trust = Certificate.loadPEM(open(self.caPath, "rb").read())

        @implementer(IAgentEndpointFactory)
        class ToBalancer:
            def endpointForURI(self, uri):
                options = optionsForClientTLS(uri.host.decode(), trustRoot=trust)
                return wrapClientTLS(
                    options, TCP4ClientEndpoint(reactor, "127.0.0.1", port)
                )

        agent = Agent.usingEndpointFactory(reactor, ToBalancer())
        response = yield agent.request(b"GET", b"https://v2.api.example.com/")
        self.assertEqual((yield readBody(response)), b"api\n")
        self.assertEqual(response.version, (b"HTTP", 1, 1))

    @inlineCallbacks
    def test_redirectToHTTPS(self):
        """
        The plain endpoint of a listener with redirect_https answers 301 to
        the https URL.
        """
        balancer = self.balancer(self.edgeConfig())
        port = yield self.listen(balancer, "default", "tcp:0:interface=127.0.0.1")
        response = yield Agent(reactor).request(
            b"GET", b"http://127.0.0.1:%d/a?b=c" % (port,), None
        )
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"),
            [b"https://127.0.0.1:8443/a?b=c"],
        )

    @inlineCallbacks
    def test_redirectIsAStage(self):
        """
        The redirect is the last stage of the chain of the listener's plain
        endpoints, served by a proxy site: its answer has the page and the
        proxy's headers, a request without a Host goes to the address it
        came to, it is written to the access log, the limits of
        C{[gatekeeper]} hold, and its connections count against
        C{max_connections} and are closed by close().
        """
        output = BytesIO()
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\nredirect_https = 8443\n"
            "[gatekeeper]\nmax_header_size = 1k\n"
            f"[upstream u]\nservers = {self.shop}\n[route r]\npath = /\nupstream = u\n",
            os.path.join(self.directory, "lb.ini"),
        )
        balancer = LoadBalancer(config, reactor, AccessLog(output))
        balancer.start()
        port = yield self.listen(balancer, "default", "tcp:0:interface=127.0.0.1")
        page = (
            b"<html><head><title>301 Moved Permanently</title></head><body>"
            b"<h1>301 Moved Permanently</h1><hr><p>manualb</p></body></html>\n"
        )

        @inlineCallbacks
        def connect(request):
            client = RawClient(request)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            return client

        old = yield connect(b"GET /a?b HTTP/1.0\r\n\r\n")
        yield old.lost
        head, _, body = old.data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.0 301 Moved Permanently")
        self.assertIn(b"Location: https://127.0.0.1:8443/a?b", lines)
        self.assertIn(b"Content-Type: text/html; charset=utf-8", lines)
        self.assertIn(b"Server: manualb/", head)
        self.assertEqual(body, page)
        [line] = output.getvalue().splitlines()
        self.assertIn(b'"GET /a?b HTTP/1.0" 301 %d ' % (len(page),), line)

        tooLarge = yield connect(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 2048 + b"\r\n\r\n"
        )
        yield tooLarge.lost
        self.assertTrue(tooLarge.data.startswith(b"HTTP/1.1 431 "), tooLarge.data)

        kept = yield connect(b"GET /x HTTP/1.1\r\nHost: www.example.com:80\r\n\r\n")
        yield kept.waitFor(page)
        self.assertIn(b"\r\nLocation: https://www.example.com:8443/x\r\n", kept.data)
        self.assertEqual(balancer.connections.open, 1)
        closed = balancer.close()
        yield kept.lost
        yield closed
        self.assertEqual(balancer.connections.open, 0)

    @inlineCallbacks
    def test_listenerRouteSetAndPaths(self):
        """
        A listener serves only its routes: here /static/ (prefix stripped),
        and not the exact /health nor the host routes.
        """
        balancer = self.balancer(self.edgeConfig())
        port = yield self.listen(balancer, "internal", "tcp:0:interface=127.0.0.1")
        agent = Agent(reactor)
        response = yield agent.request(b"GET", b"http://127.0.0.1:%d/static/x.css" % (port,))
        self.assertEqual((yield readBody(response)), b"static\n")
        response = yield agent.request(b"GET", b"http://127.0.0.1:%d/health" % (port,))
        self.assertEqual(response.code, 404)
        yield readBody(response)

    @inlineCallbacks
    def test_reencryption(self):
        """
        An https:// server is spoken to over TLS, its certificate verified
        against tls_ca for tls_name; the wrong name fails (502), and
        tls_verify = off accepts it anyway.
        """
        certificate, key = writeTLSFiles(self.directory, self.ca, ["backend.internal"])
        from twisted.internet.ssl import PrivateCertificate

        with open(certificate, "rb") as c, open(key, "rb") as k:
            options = PrivateCertificate.loadPEM(c.read() + k.read()).options()
        address = yield self.backend(NamedBackend("secure"), tls=options)
        results = []
        for extra in [
            f"tls_ca = {self.caPath}\ntls_name = backend.internal",
            f"tls_ca = {self.caPath}\ntls_name = other.internal",
            "tls_verify = off",
        ]:
            balancer = self.balancer(
                "[manualb]\nlisten = tcp:0\naccess_log = off\n"
                f"[upstream secure]\nservers = https://{address}\n{extra}\n"
                "[route r]\npath = /\nupstream = secure\n"
            )
            port = yield self.listen(balancer, "default", "tcp:0")
            response = yield Agent(reactor).request(b"GET", b"http://127.0.0.1:%d/" % (port,))
            body = yield readBody(response)
            results.append((response.code, body if response.code == 200 else b""))
        self.assertEqual(results, [(200, b"secure\n"), (502, b""), (200, b"secure\n")])
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_stream(self):
        """
        A [stream] carries raw bytes to its upstream's server and back.
        """
        factory = Factory.forProtocol(Echo)
        echo = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        balancer = self.balancer(
            f"[stream echo]\nlisten = tcp:0:interface=127.0.0.1\nupstream = echo\n"
            f"[upstream echo]\nservers = {serverAddress(echo)}\n"
        )
        port = reactor.listenTCP(0, balancer.streams["echo"], interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collect(11)
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        client.transport.write(b"hello world")
        self.assertEqual((yield client.done), b"hello world")
        client.transport.loseConnection()


class MakeServiceTests(TestCase):
    """
    makeService builds one listening service for each endpoint of each
    listener and stream, with the right endpoint and factory.
    """

    def test_services(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = makeCA("manualb test CA")
        certificate, key = writeTLSFiles(directory, ca, ["www.example.com"])
        config = parseConfig(
            "[manualb]\nlisten =\n    tcp:0\n    sni:0\naccess_log = off\nredirect_https = on\n"
            "[listener inside]\nlisten = tcp:0:interface=127.0.0.1\nroutes = r\n"
            f"[tls]\ncertificates = www.example.com {certificate} {key}\n"
            "[stream s]\nlisten = tcp:0:interface=127.0.0.2\nupstream = u\n"
            "[upstream u]\nservers = 10.0.0.1:80\n[route r]\npath = /\nupstream = u\n"
        )
        parent = makeService(config, reactor)
        self.addCleanup(parent.balancer.close)
        services = {service.name: service for service in parent if service.name}
        self.assertIsInstance(services["sni:0"].endpoint, SNIServerEndpoint)
        self.assertIs(siteOf(services["sni:0"].serving), parent.balancer.sites["default"])
        redirect = siteOf(services["tcp:0"].serving)
        self.assertIs(redirect, parent.balancer.redirects["default"])
        self.assertIsInstance(redirect, ProxySite)
        self.assertIsInstance(redirect.resource.stages[-1], RedirectToHTTPS)
        self.assertIs(redirect.connections, parent.balancer.connections)
        self.assertIsInstance(
            siteOf(services["tcp:0:interface=127.0.0.1"].serving), ProxySite
        )
        self.assertIs(
            services["tcp:0:interface=127.0.0.2"].serving, parent.balancer.streams["s"]
        )


class HTTPSRedirectTests(TestCase):
    """
    The redirect to https keeps the host (without its port) and the target;
    a request without a host is sent to the address it came to.
    """

    def answer(self, host, uri, port=443, localHost="127.0.0.1"):
        headers = [] if host is None else [(b"Host", host)]
        view = requestView("192.0.2.1", False, b"GET", uri, headers, localHost)
        return RedirectToHTTPS(port).handle(Passage(view))

    def location(self, host, uri, port=443, localHost="127.0.0.1"):
        answer = self.answer(host, uri, port, localHost)
        self.assertEqual((answer.code, answer.reason), (301, b"Moved Permanently"))
        self.assertEqual(
            answer.page,
            b"<html><head><title>301 Moved Permanently</title></head><body>"
            b"<h1>301 Moved Permanently</h1><hr><p>manualb</p></body></html>\n",
        )
        [(name, location)] = answer.headers
        self.assertEqual(name, b"Location")
        return location

    def test_noHost(self):
        """
        Without a host, the Location names the local address the request
        came to; an IPv6 one in brackets.  With no address either (a UNIX
        socket), the request is refused.
        """
        self.assertEqual(self.location(None, b"/a"), b"https://127.0.0.1/a")
        self.assertEqual(self.location(None, b"/a", 8443, "::1"), b"https://[::1]:8443/a")
        self.assertEqual(self.answer(None, b"/a", localHost="").code, 400)

    def test_locations(self):
        self.assertEqual(self.location(b"Shop.Example:80", b"/a?b"), b"https://shop.example/a?b")
        self.assertEqual(self.location(b"[::1]:80", b"/", 8443), b"https://[::1]:8443/")
        self.assertEqual(
            self.location(b"h", b"http://h/x/y?z"), b"https://h/x/y?z"
        )
