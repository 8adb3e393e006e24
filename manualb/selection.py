"""
Stage 5, selection: an upstream pool picks the server for a request.

A L{Pool} owns its L{Server}s and a balancing strategy (an L{IBalancer}).
The proxy asks the pool, never the strategy, so strategies and the health
of servers can change without the proxy knowing.
"""

from __future__ import annotations

from typing import Sequence

import attrs
from zope.interface import Attribute, Interface, implementer

from manualb.config import ServerAddress, UpstreamConfig


@attrs.define(eq=False)
class Server:
    """
    One backend server of a pool, with what the balancer needs to know of it.

    @ivar address: Where the server listens.
    @ivar active: Requests in flight to this server right now.
    """

    address: ServerAddress
    active: int = 0

    @property
    def name(self) -> str:
        """
        C{host:port}, as logs and the access log show the server.
        """
        return self.address.name


class IBalancer(Interface):
    """
    A balancing strategy: chooses one server among those a pool offers.
    """

    name = Attribute("The name used for this strategy in C{balance = ...}.")

    def pick(candidates: Sequence[Server], clientAddress: str) -> Server:
        """
        Choose a server.

        @param candidates: The servers that may take the request, never empty,
            in the pool's configured order.
        @param clientAddress: The client's IP address, as text.
        """


@implementer(IBalancer)
class RoundRobin:
    """
    Each server in turn, in the order the configuration lists them.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Server], clientAddress: str) -> Server:
        server = candidates[self._next % len(candidates)]
        self._next += 1
        return server


BALANCERS = {RoundRobin.name: RoundRobin}


class Pool:
    """
    An upstream pool: the servers of one C{[upstream NAME]} section and the
    strategy that spreads requests over them.
    """

    def __init__(self, config: UpstreamConfig, balancer: IBalancer | None = None):
        self.config = config
        self.name = config.name
        self.servers = [Server(address) for address in config.servers]
        self.balancer = balancer if balancer is not None else BALANCERS[config.balance]()

    def pick(self, clientAddress: str) -> Server:
        """
        Choose the server for a request from C{clientAddress}.
        """
        return self.balancer.pick(self.servers, clientAddress)
