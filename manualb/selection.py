"""
Stage 5, selection: an upstream pool picks the server for a request.

A L{Pool} owns its L{Server}s, their health and a balancing strategy (an
L{IBalancer}).  The proxy asks the pool, never the strategy: the pool offers
the strategy only the servers that may take a request now (not marked
C{down}, healthy, under C{max_conns}, not already tried for this request),
the primaries first and the C{backup} servers only when no primary can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Sequence

import attrs
from twisted.web.iweb import IRequest
from zope.interface import Attribute, Interface

from manualb.config import ServerAddress, ServerConfig, UpstreamConfig

if TYPE_CHECKING:
    from manualb.handoff import ConnectionPool
    from manualb.health import ServerHealth


@attrs.define(eq=False)
class Server:
    """
    One backend server of a pool, as balancers and the proxy see it.

    @ivar config: Its configured address and options.
    @ivar active: Requests in flight to this server right now.
    @ivar health: Its health, kept by the pool's monitor.
    @ivar connections: Its pool of kept-alive connections.
    """

    config: ServerConfig
    active: int = 0
    health: ServerHealth | None = None
    connections: ConnectionPool | None = None

    @property
    def address(self) -> ServerAddress:
        """
        Where the server listens.
        """
        return self.config.address

    @property
    def name(self) -> str:
        """
        C{host:port}, as logs and the access log show the server.
        """
        return self.config.address.name

    @property
    def weight(self) -> float:
        """
        The configured weight, less while the server is in its C{slow_start}
        ramp after coming back.
        """
        if self.health is None:
            return float(self.config.weight)
        return self.config.weight * self.health.weightFactor()

    def available(self) -> bool:
        """
        Whether the server may take a request now.
        """
        config = self.config
        if config.down:
            return False
        if config.max_conns and self.active >= config.max_conns:
            return False
        return self.health is None or self.health.available()


class IBalancer(Interface):
    """
    A balancing strategy: chooses one server among those a pool offers.

    Write your own by implementing C{pick}, and name its factory (called with
    the text after the name, or L{None}) in C{balance = package.module.name}.
    """

    name = Attribute("The name of this strategy, as C{balance = ...} gives it.")

    def pick(candidates: Sequence[Server], request: IRequest) -> Server:
        """
        Choose a server for C{request}.

        @param candidates: The servers that may take the request now, never
            empty, in the order the configuration lists them.  Their
            C{weight} and C{active} tell their share and their load.
        @param request: The client's request: its address, headers, cookies
            and URI, for strategies that key on them.  A strategy may add
            response headers (a cookie, say).
        """


class Pool:
    """
    An upstream pool: the servers of one C{[upstream NAME]} section, their
    health, and the strategy that spreads requests over them.
    """

    def __init__(self, config: UpstreamConfig, balancer: IBalancer):
        self.config = config
        self.name = config.name
        self.servers = [Server(server) for server in config.servers]
        self.balancer = balancer
        self._tiers = [
            [server for server in self.servers if not server.config.backup],
            [server for server in self.servers if server.config.backup],
        ]

    @property
    def single(self) -> bool:
        """
        Whether the pool has one server only, with no backup.  As in nginx
        (C{peers->single}), failures never make such a server unavailable:
        there is nowhere else to send its requests, and refusing them for
        C{fail_timeout} would only turn a passing failure into an outage.
        A lone primary with backups is not single: it is marked, and the
        backups serve meanwhile.
        """
        return len(self.servers) == 1

    def canPick(self, exclude: Collection[Server] = ()) -> bool:
        """
        Whether some server not in C{exclude} is available now.
        """
        return any(
            server not in exclude and server.available() for server in self.servers
        )

    def pick(self, request: IRequest, exclude: Collection[Server] = ()) -> Server | None:
        """
        Choose the server for C{request} among the available ones not in
        C{exclude}: a primary, or a backup while no primary is available.
        L{None} when none is available.
        """
        for tier in self._tiers:
            candidates = [
                server for server in tier if server not in exclude and server.available()
            ]
            if candidates:
                return self.balancer.pick(candidates, request)
        return None
