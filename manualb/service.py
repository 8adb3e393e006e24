"""
Building the load balancer from a configuration: the pools, the URL map, the
proxy resource and the site it is served by, and the listening services
(stage 1, the entry).
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.interfaces import IReactorCore

from manualb.accesslog import AccessLog
from manualb.balancers import makeBalancer
from manualb.config import Config, UpstreamConfig
from manualb.handoff import ConnectionPool
from manualb.health import HealthMonitor
from manualb.proxy import ProxyResource, ProxySite
from manualb.selection import Pool
from manualb.urlmap import URLMap


class LoadBalancer:
    """
    Everything one configuration builds, ready to be served.

    @ivar pools: The upstream pools by name.
    @ivar resource: The proxy, a L{ProxyResource} that can also be mounted in
        another L{twisted.web.server.Site}.
    @ivar site: A L{ProxySite} serving C{resource} at the root.
    """

    def __init__(self, config: Config, reactor: IReactorCore, accessLog: AccessLog | None = None):
        self.config = config
        self.reactor = reactor
        if accessLog is None and config.access_log is not None:
            accessLog = AccessLog.open(config.access_log)
        self.accessLog = accessLog
        self.pools = {name: _buildPool(upstream, reactor) for name, upstream in config.upstreams.items()}
        self.urlMap = URLMap.fromConfig(config.routes, self.pools)
        self.resource = ProxyResource(self.urlMap, reactor, accessLog)
        self.site = ProxySite(self.resource, timeout=config.client_timeout, reactor=reactor)

    def start(self) -> None:
        """
        Start what runs in the background: the active health probes.
        """
        for pool in self.pools.values():
            pool.monitor.start()

    def close(self) -> None:
        """
        Stop the probes, close backend connections and the access log.
        """
        for pool in self.pools.values():
            pool.monitor.stop()
            for server in pool.servers:
                server.connections.closeAll()
        if self.accessLog is not None:
            self.accessLog.close()
            self.accessLog = None


def _buildPool(config: UpstreamConfig, reactor) -> Pool:
    """
    A pool with its strategy, a connection pool per server, and its health
    monitor.
    """
    pool = Pool(config, makeBalancer(config.balance, config.balance_argument))
    for server in pool.servers:
        server.connections = ConnectionPool(reactor, server.address, config)
    pool.monitor = HealthMonitor(pool, reactor, config.health_check)
    return pool


class _Lifecycle(Service):
    """
    Starts the balancer's probes with the application, and closes its
    connections and log when the application stops.
    """

    def __init__(self, balancer: LoadBalancer):
        self.balancer = balancer

    def startService(self):
        super().startService()
        self.balancer.start()

    def stopService(self):
        super().stopService()
        self.balancer.close()


def makeService(config: Config, reactor: IReactorCore) -> MultiService:
    """
    A service that runs the load balancer of C{config}: one listening service
    for each C{listen} endpoint, all serving the same proxy.

    Add it to your own application (C{service.setServiceParent(parent)}) to
    embed manualb; C{service.balancer} is the L{LoadBalancer} it serves.
    """
    balancer = LoadBalancer(config, reactor)
    parent = MultiService()
    parent.balancer = balancer
    _Lifecycle(balancer).setServiceParent(parent)
    for description in config.listen:
        listener: IService = strports.service(description, balancer.site, reactor=reactor)
        listener.setName(description)
        listener.setServiceParent(parent)
    return parent
