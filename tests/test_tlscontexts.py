"""
TLS session resumption (L{manualb.tlscontexts}): by session id and by
ticket, on TLS 1.2 and 1.3, with and without SNI, its keys, and ticket
key rotation.
"""

from __future__ import annotations

import os
import socket
import ssl

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from manualb.config import ConfigError
from manualb.configfile import loadConfig
from manualb.entry import serverEndpoint
from manualb.termination import SNIServerEndpoint, contextFactoryFor
from manualb.tlscontexts import SESSION_ID_CONTEXT
from manualb.tlstesting import makeCA, makeTLSConfig, writeCA, writeTLSFiles

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


class _Hello(Protocol):
    """
    Says C{hi} once TLS is up (after which a TLS 1.3 client has its
    tickets) and closes.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"hi")
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.factory.lost.append(reason)
        waiting, self.factory.waiting = self.factory.waiting, []
        for each in waiting:
            each.callback(None)


class _HelloFactory(Factory):
    protocol = _Hello

    def __init__(self) -> None:
        self.lost: list = []
        self.waiting: list[Deferred[None]] = []

    def allLost(self, count: int) -> Deferred[None]:
        """
        Fire once C{count} connections have closed on the server's side.
        """
        if len(self.lost) >= count:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self.waiting.append(waiting)
        return waiting.addCallback(lambda _: self.allLost(count))


@attrs.frozen
class Handshake:
    reused: bool
    hasTicket: bool
    session: ssl.SSLSession


def _clientContext(caPath: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=caPath)
    context.minimum_version = context.maximum_version = version
    context.check_hostname = False
    return context


def _handshake(port, context, name, session) -> Handshake:
    """
    One connection to 127.0.0.1:C{port} offering C{session}, read to its end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name, session=session) as tls:
            data = b""
            while len(data) < 2:
                more = tls.recv(2)
                if not more:
                    break
                data += more
            assert data == b"hi", data
            return Handshake(tls.session_reused, tls.session.has_ticket, tls.session)


class ResumptionTests(TestCase):
    """
    Clients of an C{sni:} listener (its L{SNIServerEndpoint}) resume their
    sessions, as nginx's do.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.ca = makeCA("manualb test CA")
        self.caPath = writeCA(self.directory, self.ca)
        self.connections = 0

    @inlineCallbacks
    def listen(self, clock=None, **options):
        """
        Listen with two certificates (C{a.example}, the default, and
        C{b.example}) and the C{[tls]} C{options}; the port number.
        """
        tls = makeTLSConfig(self.directory, self.ca, [["a.example"], ["b.example"]], **options)
        contexts = contextFactoryFor(tls)
        if clock is not None:
            contexts.rotateWith(clock)
        self.factory = _HelloFactory()
        port = yield SNIServerEndpoint(reactor, 0, contexts, interface="127.0.0.1").listen(
            self.factory
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def handshake(self, port, version, name=None, session=None):
        context = self.clients.setdefault(version, _clientContext(self.caPath, version))
        result = yield deferToThread(_handshake, port, context, name, session)
        self.connections += 1
        yield self.factory.allLost(self.connections)
        return result

    @property
    def clients(self) -> dict:
        return self.__dict__.setdefault("_clients", {})

    @inlineCallbacks
    def resumptions(self, port, version, name=None, count=3):
        """
        A full handshake, then C{count} offering the last session: whether
        each resumed, and whether each session had a ticket.
        """
        first = yield self.handshake(port, version, name)
        self.assertFalse(first.reused)
        session, reused, tickets = first.session, [], [first.hasTicket]
        for _ in range(count):
            each = yield self.handshake(port, version, name, session)
            reused.append(each.reused)
            tickets.append(each.hasTicket)
            session = each.session
        return reused, tickets

    @inlineCallbacks
    def test_ticketsTLS12(self):
        """
        By default, a TLS 1.2 client gets a ticket and resumes with it, by
        any name: the default certificate's, another's, or none.
        """
        port = yield self.listen(ssl_session_cache=False)
        for name in (None, "a.example", "b.example"):
            reused, tickets = yield self.resumptions(port, TLS12, name)
            self.assertEqual((reused, tickets), ([True] * 3, [True] * 4), name)

    @inlineCallbacks
    def test_sessionIdTLS12(self):
        """
        With tickets off, a TLS 1.2 client gets no ticket and resumes by its
        session id, found in the cache.
        """
        port = yield self.listen(ssl_session_tickets=False)
        for name in (None, "a.example", "b.example"):
            reused, tickets = yield self.resumptions(port, TLS12, name)
            self.assertEqual((reused, tickets), ([True] * 3, [False] * 4), name)

    @inlineCallbacks
    def test_ticketsTLS13(self):
        """
        A TLS 1.3 client resumes with its ticket (a PSK), with the cache off.
        """
        port = yield self.listen(ssl_session_cache=False)
        for name in (None, "a.example", "b.example"):
            reused, _ = yield self.resumptions(port, TLS13, name)
            self.assertEqual(reused, [True] * 3, name)

    @inlineCallbacks
    def test_cacheTLS13(self):
        """
        With tickets off, a TLS 1.3 client resumes with the ticket that names
        its session in the cache.
        """
        port = yield self.listen(ssl_session_tickets=False)
        for name in (None, "b.example"):
            reused, _ = yield self.resumptions(port, TLS13, name)
            self.assertEqual(reused, [True] * 3, name)

    @inlineCallbacks
    def test_ticketsOff(self):
        """
        C{ssl_session_tickets} off (and the cache off) really turns tickets
        off: no TLS 1.2 ticket, and no resumption on either version.
        """
        port = yield self.listen(ssl_session_tickets=False, ssl_session_cache=False)
        for version in (TLS12, TLS13):
            for name in (None, "b.example"):
                reused, tickets = yield self.resumptions(port, version, name, count=2)
                self.assertEqual(reused, [False] * 2, (version, name))
                if version == TLS12:
                    self.assertEqual(tickets, [False] * 3)

    @inlineCallbacks
    def test_rotation(self):
        """
        Once the rotation interval has passed, the next connection gets a new
        ticket key: a ticket of the old key gives a full handshake, and the
        new ticket then resumes.
        """
        clock = Clock()
        port = yield self.listen(
            clock, ssl_session_cache=False, ssl_session_ticket_key_rotation=60.0
        )
        for version in (TLS12, TLS13):
            first = yield self.handshake(port, version, "b.example")
            clock.advance(59)
            second = yield self.handshake(port, version, "b.example", first.session)
            self.assertTrue(second.reused)
            clock.advance(1)
            third = yield self.handshake(port, version, "b.example", second.session)
            self.assertFalse(third.reused)
            fourth = yield self.handshake(port, version, "b.example", third.session)
            self.assertTrue(fourth.reused)

    @inlineCallbacks
    def test_foreignSession(self):
        """
        A session id and ticket this server did not make (another server's,
        with other keys, for the same names) give a full handshake, and the
        connection works.
        """
        other = yield self.listen()
        otherFactory = self.factory
        port = yield self.listen()
        for version in (TLS12, TLS13):
            self.factory, mine = otherFactory, self.factory
            connections, self.connections = self.connections, len(otherFactory.lost)
            foreign = yield self.handshake(other, version, "a.example")
            self.factory, self.connections = mine, connections
            result = yield self.handshake(port, version, "a.example", foreign.session)
            self.assertFalse(result.reused)
            again = yield self.handshake(port, version, "a.example", result.session)
            self.assertTrue(again.reused)

    @inlineCallbacks
    def test_sslLine(self):
        """
        An C{ssl:} line resumes TLS 1.2 sessions by id and TLS 1.3 ones by
        the cache, without tickets.
        """
        certificate, key = writeTLSFiles(self.directory, self.ca, ["a.example"])
        endpoint = serverEndpoint(
            reactor,
            f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}",
        )
        self.factory = _HelloFactory()
        listening = yield endpoint.listen(self.factory)
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        for version in (TLS12, TLS13):
            reused, tickets = yield self.resumptions(port, version, "a.example", count=2)
            self.assertEqual(reused, [True] * 2, version)
            if version == TLS12:
                self.assertEqual(tickets, [False] * 3)


class RotationTests(SynchronousTestCase):
    """
    L{SNIContextFactory} changes its starting context, which holds the
    ticket keys, at the rotation interval of its clock.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        self.tls = makeTLSConfig(
            directory, makeCA("manualb test CA"), [["a.example"], ["b.example"]]
        )

    def test_rotates(self) -> None:
        """
        The first connection after the interval starts on a new context,
        which also serves C{a.example}; C{b.example}'s stays.
        """
        contexts = contextFactoryFor(self.tls)
        clock = MemoryReactorClock()
        SNIServerEndpoint(clock, 0, contexts)
        first = contexts.defaultContext
        other = contexts.contextFor("b.example")
        clock.advance(3599)
        self.assertIs(contexts.serverConnectionForTLS(None).get_context(), first)
        clock.advance(1)
        second = contexts.serverConnectionForTLS(None).get_context()
        self.assertIsNot(second, first)
        self.assertIs(contexts.defaultContext, second)
        self.assertIs(contexts.contextFor("a.example"), second)
        self.assertIs(contexts.contextFor("b.example"), other)
        self.assertIs(contexts.serverConnectionForTLS(None).get_context(), second)

    def test_noTicketsNoRotation(self) -> None:
        """
        With tickets off there is no key to change, and no rotation.
        """
        contexts = contextFactoryFor(attrs.evolve(self.tls, ssl_session_tickets=False))
        clock = MemoryReactorClock()
        SNIServerEndpoint(clock, 0, contexts)
        first = contexts.defaultContext
        clock.advance(86400)
        self.assertIs(contexts.serverConnectionForTLS(None).get_context(), first)

    def test_sessionSettings(self) -> None:
        """
        Every context has the cache on (server side), the shared session id
        context and the timeout.
        """
        from OpenSSL import SSL

        contexts = contextFactoryFor(attrs.evolve(self.tls, ssl_session_timeout=600.0))
        for name in ("a.example", "b.example"):
            context = contexts.contextFor(name)
            self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_SERVER)
            self.assertEqual(context.get_timeout(), 600)
        self.assertEqual(SESSION_ID_CONTEXT, b"manualb")

    def test_reload(self) -> None:
        """
        After an update (a reload), rotation goes on with the same clock.
        """
        contexts = contextFactoryFor(self.tls)
        clock = MemoryReactorClock()
        SNIServerEndpoint(clock, 0, contexts)
        contexts.update(contextFactoryFor(self.tls))
        first = contexts.defaultContext
        clock.advance(3600)
        self.assertIsNot(contexts.serverConnectionForTLS(None).get_context(), first)


class SessionKeysTests(SynchronousTestCase):
    """
    The session keys of C{[tls]}, read from a file: a bad value names the
    file, line and key.
    """

    def load(self, keys: str):
        directory = os.path.abspath(self.mktemp())
        certificate, key = writeTLSFiles(directory, makeCA("manualb test CA"), ["a.example"])
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write(
                "[listener web]\nlisten = sni:0\n\n[upstream pool]\nservers = 127.0.0.1:1\n\n"
                "[route default]\npath = /\nupstream = pool\n\n"
                f"[tls]\ncertificates = a.example {certificate} {key}\n" + keys
            )
        return path

    def assertError(self, keys: str, line: int, expected: str) -> None:
        path = self.load(keys)
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(str(error), f"{path}, line {line}: [tls] {expected}")

    def test_defaults(self) -> None:
        tls = loadConfig(self.load("")).tls
        self.assertEqual(
            (
                tls.ssl_session_cache,
                tls.ssl_session_timeout,
                tls.ssl_session_tickets,
                tls.ssl_session_ticket_key_rotation,
            ),
            (True, 300.0, True, 3600.0),
        )

    def test_values(self) -> None:
        tls = loadConfig(
            self.load(
                "ssl_session_cache = OFF\nssl_session_timeout = 1h\n"
                "ssl_session_tickets = off\nssl_session_ticket_key_rotation = 12h\n"
            )
        ).tls
        self.assertEqual(
            (
                tls.ssl_session_cache,
                tls.ssl_session_timeout,
                tls.ssl_session_tickets,
                tls.ssl_session_ticket_key_rotation,
            ),
            (False, 3600.0, False, 43200.0),
        )

    def test_badCache(self) -> None:
        self.assertError(
            "ssl_session_cache = yes\n", 13, "ssl_session_cache: expected on or off, got 'yes'"
        )

    def test_nginxCacheSize(self) -> None:
        self.assertError(
            "ssl_session_cache = shared:SSL:10m\n",
            13,
            "ssl_session_cache: expected on or off, got 'shared:SSL:10m': the cache "
            "is OpenSSL's built-in one of each process, holding 20480 sessions (its "
            "size cannot be set, nor can it be shared)",
        )

    def test_badTimeout(self) -> None:
        self.assertError(
            "ssl_session_timeout = 0\n", 13, "ssl_session_timeout: must be greater than zero, got '0'"
        )

    def test_badTickets(self) -> None:
        self.assertError(
            "ssl_session_tickets = 1\n", 13, "ssl_session_tickets: expected on or off, got '1'"
        )

    def test_badRotation(self) -> None:
        self.assertError(
            "ssl_session_ticket_key_rotation = soon\n",
            13,
            "ssl_session_ticket_key_rotation: bad duration 'soon': expected a "
            "number at 'soon'",
        )




class _Answer(Protocol):
    """
    Answers each request as a proxy does: a head in two parts, then the body
    in ten small chunks and C{extra} bytes more.
    """

    extra = 0

    def dataReceived(self, data: bytes) -> None:
        self.transport.writeSequence([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 100\r\n\r\n"])
        for _ in range(10):
            self.transport.write(b"x" * 10)
        if self.extra:
            self.transport.write(b"y" * self.extra)


class RecordTests(SynchronousTestCase):
    """
    A TLS listener's writes of one reactor turn become as few TLS records as
    can be: Twisted's buffering TLS transport (which the listeners use)
    gathers them, then cuts them into records of 16 KiB.
    """

    def records(self, extra: int) -> list[int]:
        """
        The payload sizes of the TLS records of one answer.
        """
        from OpenSSL import SSL
        from twisted.internet.testing import StringTransport
        from twisted.protocols.tls import TLSMemoryBIOFactory

        contexts = contextFactoryFor(
            makeTLSConfig(self.mktemp(), makeCA("manualb test CA"), [["a.example"]])
        )
        clock = Clock()
        answer = type("Answer", (_Answer,), {"extra": extra})
        server = TLSMemoryBIOFactory(
            contexts, False, Factory.forProtocol(answer), clock
        ).buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                server.dataReceived(client.bio_read(65536))
            except SSL.WantReadError:
                pass
            clock.advance(0)
            if transport.value():
                client.bio_write(transport.value())
                transport.clear()
        client.send(b"GET / HTTP/1.1\r\n\r\n")
        server.dataReceived(client.bio_read(65536))
        clock.advance(0)
        out, sizes = transport.value(), []
        while out:
            size = int.from_bytes(out[3:5], "big")
            sizes.append(size)
            out = out[5 + size :]
        return sizes

    def test_smallAnswer(self) -> None:
        """
        A head and a short body written in twelve parts go out as one record.
        """
        self.assertEqual(len(self.records(0)), 1)

    def test_bigAnswer(self) -> None:
        """
        A 200 kB body goes out in full records (16 KiB of data each, plus
        the AEAD's overhead), the last one excepted.
        """
        sizes = self.records(200000)
        self.assertEqual(len(sizes), 13)
        self.assertEqual(set(sizes[:-1]), {16384 + 17})
