"""
What every connection of the proxy shares: Nagle's algorithm off on each
TCP connection it accepts or opens, writes sent at once when the socket has
room (L{sendNow}), its timers cancelled alike, L{Deadline}s for the
timeouts that move with every request, and a connection it opened untied
from what opened it once it is lost (L{releaseConnector}).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport, ITransport


def cancelCall(call: IDelayedCall | None) -> None:
    """
    Cancel C{call} if it is still pending; returns L{None}, for
    C{self.timer = cancelCall(self.timer)}.
    """
    if call is not None and call.active():
        call.cancel()


def _innermost(transport: ITransport | None) -> ITransport | None:
    """
    The transport under every layer over C{transport} (TLS), at most eight
    deep.
    """
    for _ in range(8):
        inner = getattr(transport, "transport", None)
        if inner is None:
            break
        transport = inner
    return transport


def setNoDelay(transport: ITransport) -> None:
    """
    Turn Nagle's algorithm off (C{TCP_NODELAY}) on the TCP connection under
    C{transport}, also when TLS is layered over it: the proxy relays small
    writes (a WINDOW_UPDATE, a body chunk) that must not wait for an ACK.
    """
    tcp = ITCPTransport(_innermost(transport), None)
    if tcp is not None:
        try:
            tcp.setTcpNoDelay(True)
        except OSError:
            pass


def releaseConnector(transport: ITransport | None) -> None:
    """
    Untie the lost client connection under C{transport} (also when TLS is
    layered over it) from the connector that made it.

    Twisted's TCP client connection and its connector refer to each other
    for good, and so do the connector and the factory a client endpoint
    wraps around the caller's: cycles that only the cycle collector's full
    collections free, and a busy process makes those seldom, so that the
    connections a proxy closes (a backend ends one every so many requests)
    pile up for a long while.  Once the connection is lost neither link is
    used again; call this from its protocol's C{connectionLost}.
    """
    connector = getattr(_innermost(transport), "connector", None)
    if connector is None:
        return
    connector.transport = None
    factory = getattr(connector, "factory", None)
    if getattr(factory, "_connector", None) is connector:
        factory._connector = None


def _nothing() -> None:
    pass


class Deadline:
    """
    A timeout that is set and cleared on every request but seldom expires:
    an idle or read timeout of a kept-alive connection.

    Setting it only notes the time; the reactor holds at most one call for
    it, made when none is pending, and moved only when the deadline comes
    sooner than that call.  A call that comes before the deadline (which
    moved later meanwhile) is made again for the rest; one that comes after
    the deadline was cleared does nothing.  So a connection that serves
    thousands of requests asks the reactor for a call once a timeout
    period, not twice a request (a call made and cancelled each time costs
    more than the request's own parsing).

    @ivar pending: Whether the deadline is set.
    """

    __slots__ = ("_clock", "_expired", "_when", "_call", "_callAt")

    def __init__(self, clock: IReactorTime, expired: Callable[[], object]) -> None:
        """
        @param clock: Tells the time and makes the call.
        @param expired: Called when the deadline passes while set.
        """
        self._clock = clock
        self._expired = expired
        self._when: float | None = None
        self._call: IDelayedCall | None = None
        # When the call is due (its getTime(), without the method call).
        self._callAt = 0.0

    @property
    def pending(self) -> bool:
        return self._when is not None

    def set(self, seconds: float) -> None:
        """
        Expire C{seconds} from now, unless set again or cleared first.
        """
        clock = self._clock
        when = clock.seconds() + seconds
        self._when = when
        call = self._call
        if call is None:
            self._call = clock.callLater(seconds, self._due)
            self._callAt = when
        elif self._callAt > when:
            call.cancel()
            self._call = clock.callLater(seconds, self._due)
            self._callAt = when

    def clear(self) -> None:
        """
        Do not expire (the reactor's call, if any, stays until its time).
        """
        self._when = None

    def stop(self) -> None:
        """
        Do not expire, ever, and cancel the reactor's call: for a
        connection that has closed, which nothing must keep alive.  What
        it would have called is let go of too: that is most often a method
        of the connection that holds the deadline, and the two would
        otherwise stay in a reference cycle, for the cycle collector.
        """
        self._when = None
        self._expired = _nothing
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self) -> None:
        self._call = None
        when = self._when
        if when is None:
            return
        clock = self._clock
        left = when - clock.seconds()
        if left > 0:
            self._call = clock.callLater(left, self._due)
            self._callAt = when
            return
        self._when = None
        self._expired()



#: The transports of plain TCP connections, which L{sendNow} may write to
#: directly.
_PLAIN_TCP = (tcp.Server, tcp.Client)


def sendNow(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when nothing is queued
    before it.

    A plain C{transport.write} queues the bytes and asks the reactor to say
    when the socket can take them: a turn of the event loop and two
    C{epoll_ctl} calls for every response head, though the socket's buffer
    is nearly always empty.  So on a plain TCP connection (no TLS) with
    nothing waiting in its buffer, the bytes go to the socket's C{send}
    straight away, and only what it does not take is queued, in order.
    This is the one place that reads the insides of Twisted's
    L{twisted.internet.abstract.FileDescriptor} (its two write buffers).
    A transport with a C{sendNow} method of its own (TLS, whose records go
    the same way: L{manualb.web.tls}) is given the bytes by it; any other
    transport, or one that is closing, gets a plain C{write}.
    """
    if (
        type(transport) in _PLAIN_TCP
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._aborting
        and not transport.TLS
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # Full, or broken: the reactor's own write finds out which.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    else:
        send = getattr(transport, "sendNow", None)
        if send is not None:
            send(data)
            return
    transport.write(data)
