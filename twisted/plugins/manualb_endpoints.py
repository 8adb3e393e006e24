"""
The C{sni:} server endpoint: TLS with certificates chosen by SNI, from the
C{[tls]} section of an INI file, wherever Twisted takes an endpoint string::

    sni:8443:tls=/etc/manualb/lb.ini
    sni:443:interface=127.0.0.1:backlog=100:tls=/etc/manualb/lb.ini

Kept tiny, since every plugin module is imported whenever Twisted looks for
plugins: the real code (L{manualb.termination}) is imported when used.
"""

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _SNIServerParser:
    prefix = "sni"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from manualb.termination import endpointFromArguments

        return endpointFromArguments(reactor, args, kwargs)


sniServerParser = _SNIServerParser()
