"""
manualb: a load balancer and reverse proxy built on Twisted.

The public API::

    from manualb import loadConfig, makeService
    service = makeService(loadConfig("conf/lb.ini"))
    service.setServiceParent(application)

or, to mount the proxy in a Site of your own::

    from manualb import LoadBalancer
    balancer = LoadBalancer(loadConfig("conf/lb.ini"), reactor)
    root.putChild(b"api", balancer.resource)
"""

from manualb._version import __version__
from manualb.config import Config, ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.web import ProxyResource, ProxySite
from manualb.service import LoadBalancer, makeService

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "LoadBalancer",
    "ProxyResource",
    "ProxySite",
    "loadConfig",
    "makeService",
    "parseConfig",
]
