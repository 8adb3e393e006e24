"""
TLS termination (L{manualb.termination}): certificates chosen by SNI,
protocol versions, ciphers, ALPN and HTTP/2, the C{sni:} endpoint string,
HSTS, and clear errors for bad files.

Real sockets on 127.0.0.1 (port 0), certificates made at test time
(L{manualb.tlstesting}); the clients are Python's L{ssl} module (and the
C{h2} package for HTTP/2) running in threads.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import warnings

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb.config import CertificateConfig, ConfigError, TLSConfig
from manualb.service import LoadBalancer
from manualb.termination import (
    SNIContextFactory,
    SNIServerEndpoint,
    SNIArguments,
    TLSFileError,
    splitDescription,
    alpnProtocols,
    contextFactoryFor,
    hstsHeader,
    parseSNIDescription,
    sniEndpoint,
    tlsConfigFromFile,
)
from manualb.testing import NamedBackend, balancerConfig, listenBackend, serverAddress
from manualb.tlstesting import makeCA, makeTLSConfig, writeCA, writeTLSFiles

try:
    import h2.config
    import h2.connection
    import h2.events
except ImportError:  # pragma: no cover
    h2 = None

TIMEOUT = 10


class Echo(Resource):
    """
    Answers with what the server saw: whether the request came over TLS, its
    HTTP version, the ALPN protocol of the connection, and the body.
    """

    isLeaf = True

    def render(self, request):
        transport = request.channel.transport
        negotiated = getattr(transport, "negotiatedProtocol", None)
        body = request.content.read() if request.content is not None else b""
        answer = {
            "secure": request.isSecure(),
            "version": request.clientproto.decode("ascii"),
            "alpn": negotiated.decode("ascii") if negotiated else None,
            "method": request.method.decode("ascii"),
            "body": body.decode("latin-1"),
        }
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer).encode("ascii")


class Echo1Line(Protocol):
    """
    Not HTTP: sends back what it receives.
    """

    def dataReceived(self, data):
        self.transport.write(data)


# Clients, run in threads ---------------------------------------------------


def _commonName(certificate: dict) -> str:
    for rdn in certificate["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return value
    raise AssertionError(f"no common name in {certificate!r}")


def _clientContext(
    cafile: str,
    alpn: list[str] | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    # The certificate is verified against the test CA, but not against the
    # name: the tests check which certificate came, also for unknown names.
    context.check_hostname = False
    with warnings.catch_warnings():
        # TLS 1.0 and 1.1 are deprecated in the ssl module: the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def handshake(port: int, serverName: str | None, context: ssl.SSLContext, request=True):
    """
    Connect, handshake, and (if C{request}) GET / over HTTP/1.1; return what
    happened.  Blocking: run it in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=serverName) as tls:
            result = {
                "name": _commonName(tls.getpeercert()),
                "version": tls.version(),
                "alpn": tls.selected_alpn_protocol(),
                "cipher": tls.cipher()[0],
            }
            if request:
                host = serverName or "127.0.0.1"
                tls.sendall(
                    b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                    % (host.encode("ascii"),)
                )
                response = b""
                while True:
                    data = tls.recv(65536)
                    if not data:
                        break
                    response += data
                head, _, body = response.partition(b"\r\n\r\n")
                result["status"] = int(head.split()[1])
                result["response"] = body
            return result


def h2Request(
    port: int,
    serverName: str,
    cafile: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
):
    """
    One HTTP/2 request over a TLS connection that negotiated C{h2} by ALPN;
    return C{(alpn, status, headers, body)}.  Blocking: run it in a thread.
    """
    context = _clientContext(cafile, alpn=["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=serverName) as tls:
            alpn = tls.selected_alpn_protocol()
            connection = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            )
            connection.initiate_connection()
            tls.sendall(connection.data_to_send())
            stream = connection.get_next_available_stream_id()
            headers = [
                (":method", method),
                (":path", path),
                (":scheme", "https"),
                (":authority", serverName),
            ]
            if body is not None:
                headers.append(("content-length", str(len(body))))
            connection.send_headers(stream, headers, end_stream=body is None)
            tls.sendall(connection.data_to_send())
            response = {"status": None, "headers": {}, "body": b"", "done": False}

            def receive():
                data = tls.recv(65536)
                if not data:
                    raise AssertionError("the server closed the connection first")
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        response["headers"] = dict(event.headers)
                        response["status"] = int(response["headers"][":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        response["body"] += event.data
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        response["done"] = True
                    elif isinstance(
                        event, (h2.events.StreamReset, h2.events.ConnectionTerminated)
                    ):
                        raise AssertionError(f"HTTP/2 failure: {event!r}")
                tls.sendall(connection.data_to_send())

            # The body goes as HTTP/2 flow control lets it.
            remaining = body
            while remaining is not None:
                size = min(
                    len(remaining),
                    connection.local_flow_control_window(stream),
                    connection.max_outbound_frame_size,
                )
                if size == 0 and remaining:
                    receive()
                    continue
                chunk, remaining = remaining[:size], remaining[size:]
                connection.send_data(stream, chunk, end_stream=not remaining)
                tls.sendall(connection.data_to_send())
                if not remaining:
                    remaining = None
            while not response["done"]:
                receive()
            status, responseHeaders, received = (
                response["status"],
                response["headers"],
                response["body"],
            )
            connection.close_connection()
            tls.sendall(connection.data_to_send())
            return alpn, status, responseHeaders, received


# Tests ---------------------------------------------------------------------


class TerminationTestsMixin:
    """
    A CA and certificates for C{default.example.com} (the first, so the
    default), C{www.example.com} and C{*.api.example.com}, and helpers to
    serve over L{sniEndpoint}.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.ca = makeCA("manualb test CA")
        self.cafile = writeCA(self.directory, self.ca)

    def tlsConfig(self, **options) -> TLSConfig:
        return makeTLSConfig(
            self.directory,
            self.ca,
            [["default.example.com"], ["www.example.com"], ["*.api.example.com"]],
            **options,
        )

    @inlineCallbacks
    def serve(self, tls: TLSConfig | None = None, site=None):
        """
        Serve C{site} (an L{Echo} by default) with C{tls}; return the port
        number.
        """
        if tls is None:
            tls = self.tlsConfig()
        if site is None:
            site = Site(Echo())
        endpoint = sniEndpoint(reactor, "sni:0:interface=127.0.0.1", tls)
        port = yield endpoint.listen(site)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def handshake(self, port, serverName, request=True, **options):
        context = _clientContext(self.cafile, **options)
        return deferToThread(handshake, port, serverName, context, request)

    @inlineCallbacks
    def assertRefused(self, port, serverName, **options):
        """
        The handshake fails; return the client's error.
        """
        try:
            result = yield self.handshake(port, serverName, request=False, **options)
        except (ssl.SSLError, ConnectionResetError) as e:
            return e
        self.fail(f"handshake succeeded: {result!r}")


class SNITests(TerminationTestsMixin, TestCase):
    """
    The certificate follows the name the client sends.
    """

    @inlineCallbacks
    def test_exactName(self):
        """
        A client asking for C{www.example.com} gets that certificate, and its
        request is secure (C{request.isSecure()}).
        """
        port = yield self.serve()
        result = yield self.handshake(port, "www.example.com")
        self.assertEqual(result["name"], "www.example.com")
        self.assertEqual(result["status"], 200)
        answer = json.loads(result["response"])
        self.assertTrue(answer["secure"])
        self.assertEqual(answer["version"], "HTTP/1.1")

    @inlineCallbacks
    def test_nameCase(self):
        """
        Names compare without regard to case.
        """
        port = yield self.serve()
        result = yield self.handshake(port, "WWW.Example.COM", request=False)
        self.assertEqual(result["name"], "www.example.com")

    @inlineCallbacks
    def test_wildcard(self):
        """
        C{*.api.example.com} serves C{v1.api.example.com}: one more label.
        """
        port = yield self.serve()
        result = yield self.handshake(port, "v1.api.example.com")
        self.assertEqual(result["name"], "*.api.example.com")
        self.assertEqual(result["status"], 200)

    @inlineCallbacks
    def test_wildcardOneLabelOnly(self):
        """
        As a certificate's wildcard, C{*.api.example.com} covers neither
        C{api.example.com} nor C{a.b.api.example.com}: they get the default.
        """
        port = yield self.serve()
        for name in ["api.example.com", "a.b.api.example.com"]:
            result = yield self.handshake(port, name, request=False)
            self.assertEqual(result["name"], "default.example.com", name)

    @inlineCallbacks
    def test_exactBeforeWildcard(self):
        """
        An exact name wins over a wildcard that also covers it, whatever
        their order.
        """
        tls = makeTLSConfig(
            self.directory,
            self.ca,
            [["*.example.com"], ["www.example.com"]],
        )
        port = yield self.serve(tls)
        result = yield self.handshake(port, "www.example.com", request=False)
        self.assertEqual(result["name"], "www.example.com")
        result = yield self.handshake(port, "mail.example.com", request=False)
        self.assertEqual(result["name"], "*.example.com")

    @inlineCallbacks
    def test_unknownName(self):
        """
        A name no certificate serves gets the first certificate.
        """
        port = yield self.serve()
        result = yield self.handshake(port, "unknown.example.org")
        self.assertEqual(result["name"], "default.example.com")
        self.assertEqual(result["status"], 200)

    @inlineCallbacks
    def test_noServerName(self):
        """
        A client sending no name (no SNI) gets the first certificate.
        """
        port = yield self.serve()
        result = yield self.handshake(port, None)
        self.assertEqual(result["name"], "default.example.com")
        self.assertEqual(result["status"], 200)

    @inlineCallbacks
    def test_chain(self):
        """
        The certificate file's chain is sent after the certificate, so a
        client trusting only the root verifies a certificate signed by an
        intermediate CA.
        """
        intermediate = makeCA("manualb intermediate CA", issuer=self.ca)
        tls = makeTLSConfig(
            self.directory,
            intermediate,
            [["www.example.com"]],
            chain=[intermediate[0]],
        )
        port = yield self.serve(tls)
        result = yield self.handshake(port, "www.example.com")
        self.assertEqual(result["name"], "www.example.com")
        self.assertEqual(result["status"], 200)

    @inlineCallbacks
    def test_sharedFiles(self):
        """
        Two names may name the same files; they are read once and serve both.
        """
        certificate, key = writeTLSFiles(
            self.directory, self.ca, ["www.example.com", "example.com"]
        )
        tls = TLSConfig(
            [
                CertificateConfig("www.example.com", certificate, key),
                CertificateConfig("example.com", certificate, key),
            ]
        )
        contextFactory = contextFactoryFor(tls)
        self.assertIs(
            contextFactory.contextFor("www.example.com"),
            contextFactory.contextFor("example.com"),
        )
        port = yield self.serve(contextFactory)
        result = yield self.handshake(port, "example.com")
        self.assertEqual(result["status"], 200)


class ContextForTests(SynchronousTestCase):
    """
    L{SNIContextFactory.contextFor} without sockets.
    """

    def test_lookup(self):
        from OpenSSL import SSL

        default, www, api, other = (SSL.Context(SSL.TLS_METHOD) for _ in range(4))
        factory = SNIContextFactory(
            [
                ("default.example.com", default),
                ("www.example.com", www),
                ("*.api.example.com", api),
                ("www.example.com", other),  # the first of two equal names wins
            ]
        )
        self.assertIs(factory.contextFor("www.example.com"), www)
        self.assertIs(factory.contextFor(b"www.example.com."), www)
        self.assertIs(factory.contextFor("v1.api.example.com"), api)
        self.assertIs(factory.contextFor(b"V1.API.example.com"), api)
        self.assertIs(factory.contextFor("api.example.com"), default)
        self.assertIs(factory.contextFor("a.b.api.example.com"), default)
        self.assertIs(factory.contextFor(".api.example.com"), default)
        self.assertIs(factory.contextFor(None), default)
        self.assertIs(factory.contextFor(b"\xff.example.com"), default)
        self.assertIs(factory.defaultContext, default)


class VersionTests(TerminationTestsMixin, TestCase):
    """
    TLS 1.2 and 1.3 are served, TLS 1.0 and 1.1 refused, and the ciphers of
    TLS 1.2 are modern ones.
    """

    @inlineCallbacks
    def assertOldVersionRefused(self, version):
        port = yield self.serve()
        # The client offers only old versions, and (at OpenSSL's security
        # level 0) the SHA-1 based ciphers and signatures they need.  With
        # the system's OpenSSL (3.0) behind Python's ssl module the client
        # does offer them, and the server answers with a protocol_version
        # alert.  A client OpenSSL that can no longer offer them at all
        # fails before sending anything (NO_PROTOCOLS_AVAILABLE): the
        # handshake fails either way, which is what matters here.  (That
        # the server's contexts turn these versions off themselves, rather
        # than only its OpenSSL's defaults, is test_versionOptions.)
        error = yield self.assertRefused(
            port,
            "www.example.com",
            minimum=ssl.TLSVersion.TLSv1,
            maximum=version,
            ciphers="DEFAULT:@SECLEVEL=0",
        )
        reasons = ("PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL")
        self.assertTrue(any(reason in str(error) for reason in reasons), str(error))

    def test_versionOptions(self):
        """
        Every context turns TLS 1.0 and 1.1 off itself (and 1.2 with
        C{min_version = TLSv1.3}), and leaves TLS 1.3 on.

        The handshake tests below cannot show this alone: the OpenSSL that
        comes with C{cryptography} also refuses TLS 1.0 and 1.1 at its
        default security level, whatever the context allows.
        """
        from OpenSSL import SSL

        for minimum, off in [
            ("TLSv1.2", SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1),
            ("TLSv1.3", SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1 | SSL.OP_NO_TLSv1_2),
        ]:
            factory = contextFactoryFor(self.tlsConfig(min_version=minimum))
            for name in ["www.example.com", "v1.api.example.com", None]:
                # set_options(0) adds nothing and returns the options.
                options = factory.contextFor(name).set_options(0)
                self.assertEqual(options & off, off, (minimum, name))
                self.assertFalse(options & SSL.OP_NO_TLSv1_3, (minimum, name))

    def test_tls10Refused(self):
        return self.assertOldVersionRefused(ssl.TLSVersion.TLSv1)

    def test_tls11Refused(self):
        return self.assertOldVersionRefused(ssl.TLSVersion.TLSv1_1)

    @inlineCallbacks
    def test_tls12(self):
        """
        A TLS 1.2 client is served, with an ECDHE AEAD cipher.
        """
        port = yield self.serve()
        result = yield self.handshake(
            port,
            "www.example.com",
            minimum=ssl.TLSVersion.TLSv1_2,
            maximum=ssl.TLSVersion.TLSv1_2,
        )
        self.assertEqual(result["version"], "TLSv1.2")
        self.assertEqual(result["status"], 200)
        self.assertTrue(result["cipher"].startswith("ECDHE-"), result["cipher"])
        self.assertTrue(
            "GCM" in result["cipher"] or "CHACHA20" in result["cipher"],
            result["cipher"],
        )

    @inlineCallbacks
    def test_tls13(self):
        """
        A TLS 1.3 client is served with TLS 1.3, also by default.
        """
        port = yield self.serve()
        result = yield self.handshake(
            port, "www.example.com", minimum=ssl.TLSVersion.TLSv1_3
        )
        self.assertEqual(result["version"], "TLSv1.3")
        self.assertEqual(result["status"], 200)
        result = yield self.handshake(port, "www.example.com", request=False)
        self.assertEqual(result["version"], "TLSv1.3")

    @inlineCallbacks
    def test_minimumTLS13(self):
        """
        With C{min_version = TLSv1.3}, a TLS 1.2 client is refused, for the
        default certificate and for the others.
        """
        port = yield self.serve(self.tlsConfig(min_version="TLSv1.3"))
        for name in ["www.example.com", None]:
            yield self.assertRefused(
                port,
                name,
                minimum=ssl.TLSVersion.TLSv1_2,
                maximum=ssl.TLSVersion.TLSv1_2,
            )
        result = yield self.handshake(port, "www.example.com", request=False)
        self.assertEqual(result["version"], "TLSv1.3")

    @inlineCallbacks
    def test_oldCiphersRefused(self):
        """
        By default, a TLS 1.2 client offering only ciphers without forward
        secrecy or without AEAD is refused.
        """
        port = yield self.serve()
        yield self.assertRefused(
            port,
            "www.example.com",
            maximum=ssl.TLSVersion.TLSv1_2,
            ciphers="AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",
        )

    @inlineCallbacks
    def test_configuredCiphers(self):
        """
        C{ciphers} sets the TLS 1.2 ciphers.
        """
        port = yield self.serve(self.tlsConfig(ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
        result = yield self.handshake(
            port, "www.example.com", request=False, maximum=ssl.TLSVersion.TLSv1_2
        )
        self.assertEqual(result["cipher"], "ECDHE-ECDSA-AES256-GCM-SHA384")


class ALPNTests(TerminationTestsMixin, TestCase):
    """
    ALPN offers HTTP/2 and HTTP/1.1, and Twisted's server speaks the one
    chosen.
    """

    def setUp(self):
        if h2 is None:  # pragma: no cover
            raise self.skipTest("the h2 package is not installed")
        super().setUp()

    def test_protocolsOffered(self):
        self.assertEqual(alpnProtocols(), [b"h2", b"http/1.1", b"http/1.0"])

    @inlineCallbacks
    def test_h2(self):
        """
        A client offering C{h2} gets it, and a real HTTP/2 request is
        answered by the site, over TLS.
        """
        port = yield self.serve()
        alpn, status, headers, body = yield deferToThread(
            h2Request, port, "www.example.com", self.cafile
        )
        self.assertEqual(alpn, "h2")
        self.assertEqual(status, 200)
        answer = json.loads(body)
        self.assertEqual(answer["version"], "HTTP/2")
        self.assertTrue(answer["secure"])

    @inlineCallbacks
    def test_h2WithBody(self):
        """
        A POST with a body over HTTP/2.
        """
        port = yield self.serve()
        alpn, status, headers, body = yield deferToThread(
            h2Request, port, "v1.api.example.com", self.cafile, "POST", "/", b"hello"
        )
        self.assertEqual(status, 200)
        answer = json.loads(body)
        self.assertEqual((answer["method"], answer["body"]), ("POST", "hello"))

    @inlineCallbacks
    def test_http11(self):
        """
        A client offering only C{http/1.1} gets it.
        """
        port = yield self.serve()
        result = yield self.handshake(port, "www.example.com", alpn=["http/1.1"])
        self.assertEqual(result["alpn"], "http/1.1")
        answer = json.loads(result["response"])
        self.assertEqual((answer["version"], answer["alpn"]), ("HTTP/1.1", "http/1.1"))

    @inlineCallbacks
    def test_noALPN(self):
        """
        A client without ALPN speaks HTTP/1.1.
        """
        port = yield self.serve()
        result = yield self.handshake(port, "www.example.com")
        self.assertIsNone(result["alpn"])
        self.assertEqual(json.loads(result["response"])["version"], "HTTP/1.1")

    @inlineCallbacks
    def test_noCommonProtocol(self):
        """
        A client offering only protocols the server does not speak is served
        without ALPN (and speaks HTTP/1.1), not refused.
        """
        port = yield self.serve()
        result = yield self.handshake(port, "www.example.com", alpn=["spdy/3"])
        self.assertIsNone(result["alpn"])
        self.assertEqual(json.loads(result["response"])["version"], "HTTP/1.1")

    @inlineCallbacks
    def test_notHTTP(self):
        """
        A listener whose factory is not an HTTP site (a layer-4 proxy, say)
        negotiates no protocol, even with a client offering C{h2}.
        """
        port = yield self.serve(site=Factory.forProtocol(Echo1Line))
        context = _clientContext(self.cafile, alpn=["h2", "http/1.1"])

        def exchange():
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
                with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
                    tls.sendall(b"ping\n")
                    return tls.selected_alpn_protocol(), tls.recv(100)

        alpn, data = yield deferToThread(exchange)
        self.assertIsNone(alpn)
        self.assertEqual(data, b"ping\n")

    def test_protocolsChosen(self):
        """
        C{protocols} sets what ALPN may choose: here HTTP/1.1 only.
        """
        contextFactory = contextFactoryFor(self.tlsConfig(), protocols=[b"http/1.1"])

        @inlineCallbacks
        def check():
            port = yield self.serve(contextFactory)
            result = yield self.handshake(port, "www.example.com", alpn=["h2", "http/1.1"])
            self.assertEqual(result["alpn"], "http/1.1")

        return check()

    @inlineCallbacks
    def test_sslStringH2(self):
        """
        Twisted's own C{ssl:} endpoint strings negotiate C{h2} too: the site
        offers it by ALPN (L{Site.acceptableProtocols}) once the C{h2}
        package is installed.
        """
        certificate, key = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        endpoint = serverFromString(
            reactor,
            "ssl:0:interface=127.0.0.1:certKey=%s:privateKey=%s"
            % (certificate.replace(":", "\\:"), key.replace(":", "\\:")),
        )
        port = yield endpoint.listen(Site(Echo()))
        self.addCleanup(port.stopListening)
        alpn, status, headers, body = yield deferToThread(
            h2Request, port.getHost().port, "www.example.com", self.cafile
        )
        self.assertEqual((alpn, status), ("h2", 200))
        self.assertEqual(json.loads(body)["version"], "HTTP/2")

    @inlineCallbacks
    def test_proxyOverH2(self):
        """
        The load balancer's own site (L{ProxySite}, streaming request bodies)
        serves HTTP/2 clients: a GET and a POST with a body reach the
        backend, which is told the client used https.
        """
        backend = NamedBackend("Backend A")
        backendPort = yield listenBackend(reactor, backend)
        self.addCleanup(backendPort.stopListening)
        balancer = LoadBalancer(balancerConfig([serverAddress(backendPort)]), reactor)
        self.addCleanup(balancer.close)
        port = yield self.serve(site=balancer.site)
        for method, body in [("GET", None), ("POST", b"x" * 100000)]:
            alpn, status, headers, received = yield deferToThread(
                h2Request, port, "www.example.com", self.cafile, method, "/p", body
            )
            self.assertEqual((alpn, status), ("h2", 200))
            self.assertEqual(received, b"Backend A\n")
        methods = [request[0] for request in backend.requests]
        self.assertEqual(methods, [b"GET", b"POST"])
        headers = backend.requests[-1][2]
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-proto"), [b"https"])

    @inlineCallbacks
    def test_brokenResponseOverH2(self):
        """
        A backend that dies mid-response resets the client's HTTP/2 stream:
        the client cannot take the short body for a whole one.
        """
        from tests.test_endtoend import DyingBackend

        backendPort = yield listenBackend(reactor, DyingBackend())
        self.addCleanup(backendPort.stopListening)
        balancer = LoadBalancer(balancerConfig([serverAddress(backendPort)]), reactor)
        self.addCleanup(balancer.close)
        port = yield self.serve(site=balancer.site)
        failure = yield self.assertFailure(
            deferToThread(h2Request, port, "www.example.com", self.cafile),
            AssertionError,
        )
        self.assertIn("StreamReset", str(failure))
        self.flushLoggedErrors()


INI = """\
[manualb]
listen = sni:8443
; other sections are not read

[tls]
certificates =
    {default}
    {www}   ; the www one
min_version = TLSv1.2
hsts = max-age=31536000; includeSubDomains

[route default]
path = /
"""


class EndpointStringTests(TerminationTestsMixin, TestCase):
    """
    C{sni:} endpoint strings.
    """

    def writeIni(self) -> str:
        default = writeTLSFiles(self.directory, self.ca, ["default.example.com"])
        www = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        path = os.path.join(self.directory, "lb.ini")
        with open(path, "w") as f:
            f.write(
                INI.format(
                    default="default.example.com %s %s" % default,
                    www="www.example.com %s %s" % www,
                )
            )
        return path

    @inlineCallbacks
    def test_serverFromString(self):
        """
        C{serverFromString(reactor, "sni:PORT:tls=FILE")} (the plugin) reads
        the C{[tls]} section of FILE.
        """
        path = self.writeIni()
        endpoint = serverFromString(
            reactor, "sni:0:interface=127.0.0.1:tls=%s" % (path.replace(":", "\\:"),)
        )
        self.assertIsInstance(endpoint, SNIServerEndpoint)
        port = yield endpoint.listen(Site(Echo()))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().host, "127.0.0.1")
        result = yield self.handshake(port.getHost().port, "www.example.com")
        self.assertEqual(result["name"], "www.example.com")
        self.assertTrue(json.loads(result["response"])["secure"])
        result = yield self.handshake(port.getHost().port, None, request=False)
        self.assertEqual(result["name"], "default.example.com")

    def test_serverFromStringNeedsTLS(self):
        """
        Outside manualb, C{tls=} is required.
        """
        error = self.assertRaises(ValueError, serverFromString, reactor, "sni:0")
        self.assertIn("tls=FILE", str(error))

    def test_sniEndpoint(self):
        """
        L{sniEndpoint} parses port, interface and backlog, and uses the
        given certificates (ignoring C{tls=}).
        """
        tls = self.tlsConfig()
        endpoint = sniEndpoint(
            reactor, "sni:8443:interface=\\:\\:1:backlog=7:tls=/nonexistent", tls
        )
        self.assertIsInstance(endpoint, SNIServerEndpoint)
        self.assertEqual(
            (endpoint.port, endpoint.interface, endpoint._backlog), (8443, "::1", 7)
        )
        self.assertEqual(
            endpoint.contextFactory.names,
            ["default.example.com", "www.example.com", "*.api.example.com"],
        )
        contextFactory = endpoint.contextFactory
        again = sniEndpoint(reactor, "sni:port=443", contextFactory)
        self.assertIs(again.contextFactory, contextFactory)
        self.assertEqual((again.port, again.interface), (443, ""))

    def test_sniEndpointErrors(self):
        tls = self.tlsConfig()
        for description in [
            "tcp:8443",
            "sni",
            "sni:http",
            "sni:70000",
            "sni:443:extra",
            "sni:443:color=blue",
        ]:
            self.assertRaises(ValueError, sniEndpoint, reactor, description, tls)

    def test_parseSNIDescription(self):
        """
        L{parseSNIDescription} checks a string without reading any file, as
        a configuration check needs.
        """
        self.assertEqual(
            parseSNIDescription("sni:443:interface=10.0.0.1:tls=/missing.ini"),
            SNIArguments(443, "10.0.0.1", 511, "/missing.ini"),
        )
        self.assertEqual(parseSNIDescription("SNI:8443"), SNIArguments(8443))
        for bad in ["sni:", "sni:x", "sni:443:backlog=0", "ssl:443"]:
            self.assertRaises(ValueError, parseSNIDescription, bad)

    def test_splitDescription(self):
        self.assertEqual(
            splitDescription("sni:443:interface=\\:\\:1:tls=/a=b"),
            (["sni", "443"], {"interface": "::1", "tls": "/a=b"}),
        )

    def test_tlsConfigFromFile(self):
        path = self.writeIni()
        tls = tlsConfigFromFile(path)
        self.assertEqual(
            [certificate.name for certificate in tls.certificates],
            ["default.example.com", "www.example.com"],
        )
        self.assertTrue(tls.certificates[1].key.endswith("www.example.com.key"))
        self.assertEqual(tls.min_version, "TLSv1.2")
        self.assertIsNone(tls.ciphers)
        # An inline comment starts at " ;" (as in the rest of the file), so
        # the ";" of an HSTS value is kept.
        self.assertEqual(tls.hsts, "max-age=31536000; includeSubDomains")

    def test_tlsConfigFromFileErrors(self):
        path = os.path.join(self.directory, "bad.ini")
        os.makedirs(self.directory, exist_ok=True)
        for text, expected in [
            ("[manualb]\nlisten = tcp:80\n", "no [tls] section"),
            ("[tls]\nmin_version = TLSv1.3\n", "certificates: missing"),
            ("[tls]\ncertificates = www.example.com /a.crt\n", "NAME CERTFILE KEYFILE"),
        ]:
            with open(path, "w") as f:
                f.write(text)
            error = self.assertRaises(ConfigError, tlsConfigFromFile, path)
            self.assertIn(path, str(error))
            self.assertIn(expected, str(error))
        missing = os.path.join(self.directory, "missing.ini")
        error = self.assertRaises(ConfigError, tlsConfigFromFile, missing)
        self.assertIn("cannot read file", str(error))


class BadFileTests(TerminationTestsMixin, SynchronousTestCase):
    """
    A file that cannot be used stops start-up with a message naming it.
    """

    def writeFile(self, name: str, content: bytes) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def assertFileError(self, tls: TLSConfig, path: str, reason: str) -> None:
        error = self.assertRaises(TLSFileError, contextFactoryFor, tls)
        self.assertIsInstance(error, ConfigError)
        self.assertEqual(error.path, path)
        self.assertTrue(str(error).startswith(path + ": "), str(error))
        self.assertIn(reason, str(error))

    def test_badKey(self):
        certificate, _ = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        key = self.writeFile("bad.key", b"this is not a key\n")
        tls = TLSConfig([CertificateConfig("www.example.com", certificate, key)])
        self.assertFileError(tls, key, "cannot load the private key")

    def test_keyOfAnotherCertificate(self):
        certificate, _ = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        _, otherKey = writeTLSFiles(self.directory, self.ca, ["other.example.com"])
        tls = TLSConfig([CertificateConfig("www.example.com", certificate, otherKey)])
        self.assertFileError(tls, otherKey, "does not match the certificate")

    def test_encryptedKey(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        certificate, _ = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        key = self.writeFile("encrypted.key", pem)
        tls = TLSConfig([CertificateConfig("www.example.com", certificate, key)])
        self.assertFileError(tls, key, "encrypted")

    def test_badCertificate(self):
        _, key = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        certificate = self.writeFile("bad.crt", b"-----BEGIN NOTHING-----\n")
        tls = TLSConfig([CertificateConfig("www.example.com", certificate, key)])
        self.assertFileError(tls, certificate, "no certificate in the file")

    def test_missingFile(self):
        certificate, _ = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        key = os.path.join(self.directory, "missing.key")
        tls = TLSConfig([CertificateConfig("www.example.com", certificate, key)])
        self.assertFileError(tls, key, "cannot read the private key")

    def test_badSettings(self):
        """
        A bad C{min_version} or C{ciphers} is a L{ConfigError} of C{[tls]}.
        """
        error = self.assertRaises(
            ConfigError, contextFactoryFor, self.tlsConfig(min_version="TLSv1.1")
        )
        self.assertIn("[tls] min_version", str(error))
        error = self.assertRaises(
            ConfigError, contextFactoryFor, self.tlsConfig(ciphers="NO-SUCH-CIPHER")
        )
        self.assertIn("[tls] ciphers", str(error))


class HSTSTests(SynchronousTestCase):
    def test_header(self):
        self.assertIsNone(hstsHeader(None))
        self.assertIsNone(hstsHeader(TLSConfig([], hsts=None)))
        self.assertIsNone(hstsHeader(TLSConfig([], hsts="off")))
        self.assertEqual(
            hstsHeader(TLSConfig([], hsts="max-age=31536000; includeSubDomains")),
            b"max-age=31536000; includeSubDomains",
        )
        self.assertRaises(ValueError, hstsHeader, TLSConfig([], hsts="a\r\nb: c"))
