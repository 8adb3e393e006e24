"""
The client's side of an HTTP connection (between stage 2, termination, and
the proxy): Twisted's HTTP/1.1 channel held to the C{[gatekeeper]} limits,
and the switch that hands a connection that negotiated C{h2} by ALPN to the
HTTP/2 connection of L{manualb.http2} instead.
"""

from __future__ import annotations

from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from manualb.config import GatekeeperConfig
from manualb.handoff import setNoDelay
from manualb.http2 import ProxyH2Connection


class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.x client connection of the proxy.
    """


class ChannelSwitch(_GenericHTTPChannelProtocol):
    """
    A client connection that starts as L{ProxyChannel} and becomes a
    L{ProxyH2Connection} when the TLS handshake negotiated C{h2}.  Any other
    protocol, or none, is served as HTTP/1.x.
    """

    def makeConnection(self, transport) -> None:
        # Twisted's channels turn Nagle off only on a bare TCP transport.
        setNoDelay(transport)
        self._channel.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            transport = self._channel.transport
            negotiated = getattr(transport, "negotiatedProtocol", None)
            if negotiated == b"h2":
                self._becomeH2(transport)
            self._negotiatedProtocol = negotiated or b"http/1.1"
        self._channel.dataReceived(data)

    def _becomeH2(self, transport) -> None:
        old = self._channel
        # The HTTP/1.1 channel registered itself as the transport's producer.
        networkProducer = old._networkProducer
        networkProducer.unregisterProducer()
        old.setTimeout(None)
        site = self._site
        channel = ProxyH2Connection(
            site.reactor, getattr(site, "gatekeeper", GatekeeperConfig())
        )
        channel.requestFactory = self._requestFactory
        channel.site = site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater
        self._channel = channel
        channel.makeConnection(transport)
        networkProducer.registerProducer(channel, True)


def buildChannel(site) -> ChannelSwitch:
    """
    The protocol of a L{manualb.proxy.ProxySite}'s connection (used as its
    C{protocol}, called with the site).
    """
    return ChannelSwitch(ProxyChannel())
