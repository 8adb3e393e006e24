"""
The twisted.web front end: the adapter between Twisted's HTTP servers and
the exchange (L{manualb.exchange}).

It is the one place that knows twisted.web's insides: every private name of
Twisted that manualb uses is used in this package, and nowhere else.

    - L{manualb.web.site}: the L{ProxySite}, its request class and the
      L{ProxyResource} that hands each request to an exchange through
      L{IDownstream}, and the upgrade takeover;
    - L{manualb.web.channel}: the HTTP/1.x channel with its gatekeeper
      limits, and the ALPN switch to HTTP/2;
    - L{manualb.web.http2}: the HTTP/2 connection with its flood limits.
"""

from manualb.web.site import (
    LINGERING_TIME,
    ProxyResource,
    ProxySite,
    StreamingRequest,
    errorPage,
    listening,
    sslContextFactory,
)

__all__ = [
    "LINGERING_TIME",
    "ProxyResource",
    "ProxySite",
    "StreamingRequest",
    "errorPage",
    "listening",
    "sslContextFactory",
]
