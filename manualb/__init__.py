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

from typing import TYPE_CHECKING

from manualb._version import __version__

if TYPE_CHECKING:
    # What type checkers and editors see; at run time, __getattr__ below.
    from manualb.config import Config, ConfigError
    from manualb.configfile import loadConfig, parseConfig
    from manualb.service import LoadBalancer, makeService
    from manualb.web import ProxyResource, ProxySite

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


def __getattr__(name: str) -> object:
    """
    The public API, imported when first asked for: importing one module of
    the package (C{manualb.tap}, C{manualb.config}) then loads that module
    and what it needs, not the whole package.
    """
    if name in ("Config", "ConfigError"):
        from manualb import config as module
    elif name in ("loadConfig", "parseConfig"):
        from manualb import configfile as module
    elif name in ("ProxyResource", "ProxySite"):
        from manualb import web as module
    elif name in ("LoadBalancer", "makeService"):
        from manualb import service as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
