"""
What every connection of the proxy shares: Nagle's algorithm off on each
TCP connection it accepts or opens, and its timers cancelled alike.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, ITCPTransport, ITransport


def cancelCall(call: IDelayedCall | None) -> None:
    """
    Cancel C{call} if it is still pending; returns L{None}, for
    C{self.timer = cancelCall(self.timer)}.
    """
    if call is not None and call.active():
        call.cancel()


def setNoDelay(transport: ITransport) -> None:
    """
    Turn Nagle's algorithm off (C{TCP_NODELAY}) on the TCP connection under
    C{transport}, also when TLS is layered over it: the proxy relays small
    writes (a WINDOW_UPDATE, a body chunk) that must not wait for an ACK.
    """
    for _ in range(8):
        inner = getattr(transport, "transport", None)
        if inner is None:
            break
        transport = inner
    tcp = ITCPTransport(transport, None)
    if tcp is not None:
        try:
            tcp.setTcpNoDelay(True)
        except OSError:
            pass
