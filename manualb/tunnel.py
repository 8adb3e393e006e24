"""
Byte tunnels: two connections joined byte for byte, with back-pressure both
ways.

A L{Tunnel} carries what one side sends to the other: when one side's
transport cannot take more, reading from the other side pauses until it
can.  Either side closing closes the other, and so does a silence of
C{idleTimeout} either way.  The HTTP exchange uses it for a WebSocket (or any
upgraded) connection after the backend's C{101}; the TCP stream proxy
(L{manualb.streams}) for every connection it accepts.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from manualb.syntax import formatDuration
from manualb.transports import cancelCall

__all__ = ["CLOSE_GRACE", "Tunnel"]

#: Seconds the side still open has, once the other closed, to take what was
#: sent to it before it is dropped (at most the tunnel's idle timeout).
CLOSE_GRACE = 30.0


@implementer(IPushProducer)
class _Reading:
    """
    Registered with one side's transport as its producer: when that
    transport cannot take more, reading from the other side pauses.
    """

    def __init__(self, tunnel: "Tunnel", source: ITransport):
        self._tunnel = tunnel
        self._source = source

    def pauseProducing(self) -> None:
        if self._tunnel.open:
            self._source.pauseProducing()

    def resumeProducing(self) -> None:
        if self._tunnel.open:
            self._source.resumeProducing()

    def stopProducing(self) -> None:
        # The transport that had us is gone; its protocol tells the tunnel.
        pass


class Tunnel:
    """
    Two connections, a client and a server, joined byte for byte.

    The protocols of the two connections feed it: L{fromClient} and
    L{fromServer} with what they receive, L{clientLost} and L{serverLost}
    when their connection closes.

    @ivar toServer: Bytes carried from the client to the server.
    @ivar toClient: Bytes carried from the server to the client.
    @ivar open: Whether the tunnel carries data: joined and not yet closing.
    @ivar closeReason: Why the tunnel closed, in words, once it has.
    @ivar closed: Fires with the tunnel once both connections are gone.
    """

    client: ITransport | None = None
    server: ITransport | None = None
    closeReason: str | None = None

    def __init__(
        self,
        reactor: IReactorTime,
        idleTimeout: float,
        onClosed: Callable[["Tunnel"], None] | None = None,
    ):
        """
        @param idleTimeout: Seconds without a byte either way after which
            both connections are closed; 0 for no limit.
        @param onClosed: Called with the tunnel once both connections are
            gone.
        """
        self.reactor = reactor
        self.idleTimeout = idleTimeout
        self.onClosed = onClosed
        self.closed: Deferred[Tunnel] = Deferred()
        self.toServer = 0
        self.toClient = 0
        self.open = False
        self._clientGone = False
        self._serverGone = False
        self._ended = False
        self._last = 0.0
        self._idleTimer: IDelayedCall | None = None
        self._graceTimer: IDelayedCall | None = None

    def join(self, client: ITransport, server: ITransport) -> None:
        """
        Start carrying bytes between C{client} and C{server}.  Neither
        transport may have a producer registered; reading from them is
        left as it is (resume a paused one once joined).
        """
        self.client = client
        self.server = server
        self.open = True
        self._last = self.reactor.seconds()
        client.registerProducer(_Reading(self, server), True)
        server.registerProducer(_Reading(self, client), True)
        if self.idleTimeout:
            self._idleTimer = self.reactor.callLater(self.idleTimeout, self._checkIdle)

    # What the two sides send.

    def fromClient(self, data: bytes) -> None:
        """
        The client sent C{data}: on to the server.
        """
        if self.open and data:
            self.toServer += len(data)
            self._last = self.reactor.seconds()
            self.server.write(data)

    def fromServer(self, data: bytes) -> None:
        """
        The server sent C{data}: on to the client.
        """
        if self.open and data:
            self.toClient += len(data)
            self._last = self.reactor.seconds()
            self.client.write(data)

    # Closing.

    def clientLost(self, reason: Failure | None = None) -> None:
        """
        The client's connection is gone: close the server's.
        """
        self._clientGone = True
        self._shut("client closed the connection")

    def serverLost(self, reason: Failure | None = None) -> None:
        """
        The server's connection is gone: close the client's.
        """
        self._serverGone = True
        self._shut("server closed the connection")

    def close(self, why: str = "closed by the proxy") -> None:
        """
        Close both connections.
        """
        self._shut(why)

    def _shut(self, why: str) -> None:
        if self.open:
            self.open = False
            self.closeReason = why
            self._idleTimer = cancelCall(self._idleTimer)
            # A transport with a producer does not close until the producer
            # is gone, and the other side will not produce again.
            if not self._clientGone:
                self.client.unregisterProducer()
            if not self._serverGone:
                self.server.unregisterProducer()
            if not (self._clientGone and self._serverGone):
                grace = CLOSE_GRACE
                if self.idleTimeout:
                    grace = min(grace, self.idleTimeout)
                self._graceTimer = self.reactor.callLater(grace, self._abort)
            # Either close may call back into this tunnel (serverLost...).
            if not self._clientGone:
                self.client.loseConnection()
            if not self._serverGone:
                self.server.loseConnection()
        if self._clientGone and self._serverGone and not self._ended:
            self._ended = True
            self._graceTimer = cancelCall(self._graceTimer)
            if self.onClosed is not None:
                self.onClosed(self)
            self.closed.callback(self)

    def _abort(self) -> None:
        self._graceTimer = None
        if not self._clientGone:
            self.client.abortConnection()
        if not self._serverGone:
            self.server.abortConnection()

    def _checkIdle(self) -> None:
        self._idleTimer = None
        idle = self.reactor.seconds() - self._last
        if idle < self.idleTimeout:
            self._idleTimer = self.reactor.callLater(
                self.idleTimeout - idle, self._checkIdle
            )
            return
        self._shut("nothing either way for " + formatDuration(self.idleTimeout))
