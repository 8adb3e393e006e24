"""
The HTTP/2 side of a client connection: Twisted's L{H2Connection}, bounded
by the C{[gatekeeper]} limits.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web._http2 import H2Connection

from manualb.config import GatekeeperConfig


class ProxyH2Connection(H2Connection):
    """
    An HTTP/2 client connection of the proxy.

    @param reactor: Schedules the connection's sends and timeouts.
    @param gatekeeper: The limits a client is held to.
    """

    def __init__(self, reactor: IReactorTime, gatekeeper: GatekeeperConfig) -> None:
        super().__init__(reactor)
        self.gatekeeper = gatekeeper
