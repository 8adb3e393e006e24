"""
The reactor C{twistd manualb} runs on (L{manualb.reactor}): Twisted's epoll
reactor, calling each ready connection without the legacy log context.
"""

from __future__ import annotations

import os
import select

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

if hasattr(select, "epoll"):
    from manualb.reactor import LeanEPollReactor


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class _Client(Protocol):
    def __init__(self, reactor, received: list[bytes]) -> None:
        self.reactor = reactor
        self.received = received

    def connectionMade(self) -> None:
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if b"".join(self.received) == b"hello":
            self.reactor.stop()


class _Reader:
    """
    A reader of one end of a pipe, which it says is lost when read; its
    C{connectionLost} raises when C{broken}.
    """

    def __init__(self, fd: int, broken: bool) -> None:
        self.fd = fd
        self.broken = broken
        self.reads = 0
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "reader"

    def doRead(self):
        self.reads += 1
        return ConnectionDone()

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        if self.broken:
            raise ValueError("broken connectionLost")


class _FailingReader(_Reader):
    def doRead(self):
        self.reads += 1
        raise ZeroDivisionError("broken doRead")


class LeanEPollReactorTests(TestCase):
    def setUp(self) -> None:
        if not hasattr(select, "epoll"):
            raise SkipTest("no epoll on this system")
        self.reactor = reactor = LeanEPollReactor()
        # Its descriptors: the waker's pipe, the epoll one.
        self.addCleanup(reactor._poller.close)
        self.addCleanup(reactor.waker.connectionLost, None)
        self.addCleanup(reactor.disconnectAll)

    def readable(self, kind: type[_Reader], broken: bool) -> _Reader:
        """
        A reader of C{kind} of a pipe with a byte to read, added to the
        reactor.
        """
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        os.write(writeEnd, b"x")
        reader = kind(readEnd, broken)
        self.reactor.addReader(reader)
        return reader

    def test_serves(self) -> None:
        """
        Connections are accepted, read and written as on Twisted's epoll
        reactor.
        """
        reactor = self.reactor
        # Closed, with the connections, as the reactor stops.
        port = reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        received: list[bytes] = []
        factory = ClientFactory.forProtocol(lambda: _Client(reactor, received))
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        # A bound on the test, should the echo never come.
        reactor.callLater(30, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertEqual(b"".join(received), b"hello")

    def test_failedHandlingLogged(self) -> None:
        """
        An error that escapes the handling of one connection's event (here,
        from its C{connectionLost}) is logged, and the other events of the
        same poll are still handled.
        """
        readers = [self.readable(_Reader, broken) for broken in (True, False)]
        self.reactor.doIteration(0)
        self.assertEqual([reader.reads for reader in readers], [1, 1])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertNotIn(readers[0], self.reactor.getReaders())
        self.assertNotIn(readers[1], self.reactor.getReaders())

    def test_failedReadLogged(self) -> None:
        """
        A read that raises is logged, and the connection is lost with the
        error, as Twisted's reactors do.
        """
        reader = self.readable(_FailingReader, False)
        self.reactor.doIteration(0)
        self.assertEqual(reader.reads, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [reason] = reader.lost
        self.assertIsInstance(reason.value, ZeroDivisionError)
        self.assertNotIn(reader, self.reactor.getReaders())
