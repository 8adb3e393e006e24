"""
A balancing strategy of your own: prefer the servers of one zone.

A strategy is a factory, called with the text written after its name in
C{balance} (or L{None} when there is none), that returns an L{IBalancer}: an
object with a C{name} and a C{pick(candidates, request)} method returning one
of the candidates.  The request is a L{manualb.view.RequestView}: the client's
address, the host, path, headers and cookies, whatever front end received it
(for a TCP stream, the address alone).  The pool has already left out the servers that cannot take
the request (down, unhealthy, full, already tried), so C{pick} only chooses.

This one sends requests to the servers whose name (C{host:port}) contains a
zone, say the servers of the balancer's own data centre, and to the others
only while none of those can take the request; within either group it takes
turns by weight, with the built-in round robin.  With this file's directory
on C{sys.path} (or the module in a package of yours), configure it as::

    [upstream app]
    servers =
        app1.eu-west.internal:8080
        app2.eu-west.internal:8080
        app1.us-east.internal:8080
    balance = custom_balancer.PreferZone eu-west
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import implementer

from manualb.balancers import RoundRobin
from manualb.interfaces import IBalancer
from manualb.selection import Server
from manualb.view import RequestView


@implementer(IBalancer)
class PreferZone:
    """
    The servers whose name contains the zone first, the others when none of
    those is available; weighted round robin within each group.
    """

    name = "prefer_zone"

    def __init__(self, argument: str | None = None) -> None:
        zone = (argument or "").strip()
        if not zone:
            # A ValueError stops start-up with this message, naming the key.
            raise ValueError("prefer_zone needs a zone, e.g. balance = ... eu-west")
        self.zone = zone
        # One rotation per group, so that falling back to the others and
        # coming back does not disturb the turns of the zone's servers.
        self._local = RoundRobin()
        self._others = RoundRobin()

    def pick(self, candidates: Sequence[Server], request: RequestView) -> Server:
        local = [server for server in candidates if self.zone in server.name]
        if local:
            return self._local.pick(local, request)
        return self._others.pick(candidates, request)
