"""
The balancing strategies that C{balance = NAME [ARGUMENT]} names.

Each strategy is an L{IBalancer}: the pool hands it the servers that may take
a request now (in configuration order, never empty) and it returns one.  The
built-in ones, by name (L{BALANCERS}):

  - C{round_robin} (the default): nginx's smooth weighted round robin.
  - C{least_conn}: the fewest requests in flight for its weight.
  - C{ip_hash}: the same client address goes to the same server.
  - C{hash KEY}: the same request value (nginx variable syntax, e.g.
    C{$cookie_sid} or C{$host$uri}) goes to the same server.
  - C{random}: the power of two choices.
  - C{cookie [NAME]}: sticky sessions by a cookie manualb sets.

C{ip_hash} and C{hash} share one consistent-hashing scheme, that of ketama
(and nginx's C{hash ... consistent}): every server owns 160 points per unit
of its configured weight on a ring of 32-bit hashes, and a key belongs to the
first point at or after its own hash.  Adding or removing a server then moves
only the keys of the points it gains or loses, about its share of the keys,
instead of reshuffling almost all of them as C{hash(key) % len(servers)}
would; and a weight is simply a number of points.  Points and keys are hashed
with MD5 as ketama does (each digest gives four points): stable across
processes and runs, unlike Python's C{hash()}, and spread well.  A retry,
which the pool offers without the servers already tried, lands on the next
server along the ring.

A strategy of your own is a factory called with the text after its name (or
L{None}) that returns an L{IBalancer}; name it by its dotted name, as in
C{balance = mycompany.balancing.PreferZone eu-west}::

    from zope.interface import implementer
    from manualb.balancers import RoundRobin
    from manualb.interfaces import IBalancer

    @implementer(IBalancer)
    class PreferZone:
        name = "prefer_zone"

        def __init__(self, argument=None):
            if not argument:
                raise ValueError("prefer_zone needs a zone, e.g. eu-west")
            self.zone = argument
            self.rotation = RoundRobin()

        def pick(self, candidates, view):
            local = [s for s in candidates if self.zone in s.name]
            return self.rotation.pick(local or candidates, view)

C{examples/custom_balancer.py} has this example, documented.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left
from collections import OrderedDict
from typing import Callable, Sequence

from twisted.python.reflect import namedAny
from zope.interface import implementer

from manualb.interfaces import IAffinity, IBalancer
from manualb.selection import Server
from manualb.stickycookie import parseCookieArgument
from manualb.variables import clientAddress, parseHashKey
from manualb.view import RequestView

__all__ = [
    "BALANCERS",
    "Cookie",
    "Hash",
    "IPHash",
    "LeastConn",
    "Random",
    "RoundRobin",
    "makeBalancer",
    "parseBalance",
    "parseHashKey",
    "serverID",
]

# Stands in for a weight of 0 where loads are divided by weights: such a
# server looks idle only while it has no request at all.
_TINY_WEIGHT = 1e-9


def _noArgument(name: str, argument: str | None) -> None:
    """
    Reject an argument given to a strategy that takes none.
    """
    if argument is not None and argument.strip():
        raise ValueError(f"{name} takes no argument, got {argument.strip()!r}")


class _SmoothWeighted:
    """
    nginx's smooth weighted round robin (C{ngx_http_upstream_round_robin.c}).

    Every pick adds each candidate's weight to its current weight, takes the
    candidate with the highest current weight (the first on a tie) and
    subtracts the total weight from it.  Over any stretch each server gets
    its share, and evenly interleaved: weights 5, 1, 1 give a a b a c a a,
    not a a a a a b c.  Weights are read at every pick, so a server ramping
    up after a C{slow_start} gets more as its weight grows.

    The current weights are kept per server, so a server that is skipped
    for a while (down, or not offered) keeps its place.
    """

    def __init__(self) -> None:
        self._current: dict[Server, float] = {}
        self._turn = 0

    def choose(self, candidates: Sequence[Server]) -> Server:
        weights = [server.weight for server in candidates]
        return self.chooseWeighted(candidates, weights, sum(weights))

    def chooseWeighted(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float
    ) -> Server:
        """
        As L{choose}, for candidates whose weights are known: C{weights},
        in the candidates' order, and their sum, C{total}.
        """
        current = self._current
        best = candidates[0]
        bestCurrent = float("-inf")
        for server, weight in zip(candidates, weights):
            value = current.get(server, 0.0) + weight
            current[server] = value
            if value > bestCurrent:
                best, bestCurrent = server, value
        if total <= 0:
            # Every weight is 0 (all servers at the very start of a slow
            # start, say): nothing to weigh, so take turns.
            best = candidates[self._turn % len(candidates)]
            self._turn += 1
            return best
        current[best] = bestCurrent - total
        return best


# Each built-in strategy has a _pickSteady(candidates, weights, total,
# view), which the pool calls in place of pick() when the candidates are
# its primaries, every one plainly up: their weights, in order, and the sum
# of them are then known (manualb.selection.Pool._steadyPrimaries).  It
# picks as pick() would.


@implementer(IBalancer)
class RoundRobin:
    """
    Smooth weighted round robin, as nginx does it: each server in turn, as
    often as its weight says, the turns interleaved (weights 3 and 1 give
    A A B A).  The default strategy.
    """

    name = "round_robin"

    def __init__(self, argument: str | None = None) -> None:
        _noArgument(self.name, argument)
        self._rotation = _SmoothWeighted()

    def pick(self, candidates: Sequence[Server], view: RequestView) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        return self._rotation.choose(candidates)

    def _pickSteady(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float, view
    ) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        return self._rotation.chooseWeighted(candidates, weights, total)


@implementer(IBalancer)
class LeastConn:
    """
    The server with the fewest requests in flight for its weight (C{active /
    weight}), as nginx's C{least_conn}: a server twice as heavy may carry
    twice the load.  Servers equally loaded share by smooth weighted round
    robin, so idle equal servers alternate, and a quiet pool, where every
    server is always idle, still honours the weights.
    """

    name = "least_conn"

    def __init__(self, argument: str | None = None) -> None:
        _noArgument(self.name, argument)
        self._ties = _SmoothWeighted()

    def pick(self, candidates: Sequence[Server], view: RequestView) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        return self._leastLoaded(candidates, [server.weight for server in candidates])

    def _pickSteady(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float, view
    ) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        return self._leastLoaded(candidates, weights)

    def _leastLoaded(self, candidates: Sequence[Server], weights: Sequence[float]) -> Server:
        """
        The candidate with the fewest requests in flight for its weight (of
        C{weights}, in the candidates' order), the tied ones sharing by
        smooth weighted round robin.
        """
        lowest = float("inf")
        tied: list[Server] = []
        tiedWeights: list[float] = []
        for server, weight in zip(candidates, weights):
            load = server.active / (weight or _TINY_WEIGHT)
            if load < lowest:
                lowest = load
                tied = [server]
                tiedWeights = [weight]
            elif load == lowest:
                tied.append(server)
                tiedWeights.append(weight)
        if len(tied) == 1:
            return tied[0]
        return self._ties.chooseWeighted(tied, tiedWeights, sum(tiedWeights, 0.0))


@implementer(IBalancer)
class Random:
    """
    The power of two choices: draw two different servers at random, each
    draw weighted by the servers' weights, and take the less loaded (C{active
    / weight}; the first drawn on a tie).

    Nearly as even as L{LeastConn}, yet it never sends a whole burst to the
    one server that looks least loaded, which matters when the loads it sees
    lag behind (several balancers in front of the same servers).
    """

    name = "random"

    def __init__(self, argument: str | None = None, *, rng: random.Random | None = None) -> None:
        """
        @param rng: Where the draws come from; a fresh L{random.Random} unless
            given (tests give a seeded one).
        """
        _noArgument(self.name, argument)
        self._random = (rng if rng is not None else random.Random()).random

    def _draw(self, weights: list[float], total: float) -> int:
        """
        The index of a weight drawn with probability weight / total, C{total}
        being the sum of C{weights}; a weight of 0 is never drawn.
        """
        point = self._random() * total
        last = 0
        for index, weight in enumerate(weights):
            if weight > 0:
                last = index
                point -= weight
                if point < 0:
                    return index
        return last  # Rounding left a crumb of the point: the last one drawable.

    def pick(self, candidates: Sequence[Server], view: RequestView) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        weights = [server.weight for server in candidates]
        total = sum(weights)
        if total <= 0:
            # Every weight is 0: draw uniformly.
            weights = [1.0] * len(candidates)
            total = float(len(candidates))
        firstIndex = self._draw(weights, total)
        first = candidates[firstIndex]
        rest = total - weights[firstIndex]
        if rest <= 0:
            # Nobody else has any weight, and a weightless server is never
            # preferred to one with weight.
            return first
        weights[firstIndex] = 0.0
        second = candidates[self._draw(weights, rest)]
        firstLoad = first.active / (first.weight or _TINY_WEIGHT)
        secondLoad = second.active / (second.weight or _TINY_WEIGHT)
        return second if secondLoad < firstLoad else first

    def _pickSteady(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float, view
    ) -> Server:
        # The servers' weights are read again: a pick that draws no server
        # of weight 0 is rare enough not to need a way of its own.
        return self.pick(candidates, view)


# Consistent hashing (see the module docstring).

#: Ring points per unit of configured weight, as in ketama and nginx.
POINTS_PER_WEIGHT = 160
_POINTS_PER_DIGEST = 4
_RING_CACHE_SIZE = 16


def _hashKey(key: bytes) -> int:
    """
    The 32-bit ring position of C{key}: the first four bytes of its MD5,
    little-endian, as ketama reads them.
    """
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest()[:4], "little")


class _Ring:
    """
    A ketama ring over some servers: sorted points, each owned by a server.

    A server's points depend only on its name and configured weight (not its
    effective weight, which moves during a slow start), so a key keeps its
    server for as long as both are there.
    """

    def __init__(self, servers: Sequence[Server]) -> None:
        units = {server: max(server.config.weight, 0) for server in servers}
        if not any(units.values()):
            units = dict.fromkeys(servers, 1)
        owned: list[tuple[int, str, Server]] = []
        for server, weight in units.items():
            name = server.name
            for index in range(weight * POINTS_PER_WEIGHT // _POINTS_PER_DIGEST):
                digest = hashlib.md5(f"{name}-{index}".encode(), usedforsecurity=False).digest()
                for offset in range(0, 16, 4):
                    point = int.from_bytes(digest[offset : offset + 4], "little")
                    owned.append((point, name, server))
        # By name after the point, so that a collision resolves the same way
        # whatever the order of the candidates.
        owned.sort(key=lambda point: point[:2])
        self._points = [point for point, _, _ in owned]
        self._owners = [server for _, _, server in owned]

    def find(self, key: bytes) -> Server:
        """
        The server owning the first point at or after C{key}'s hash, going
        round past the last point to the first.
        """
        index = bisect_left(self._points, _hashKey(key))
        if index == len(self._points):
            index = 0
        return self._owners[index]


class _ConsistentHash:
    """
    Picks by a request key on a ketama ring over the candidates.

    The ring of a set of candidates is built once and kept: the candidates
    are usually all the servers, and otherwise one of a few subsets (a
    server down, a retry without the server tried), so a small cache of the
    rings last used makes a pick one MD5 and one bisection.
    """

    def __init__(self) -> None:
        self._rings: OrderedDict[tuple[Server, ...], _Ring] = OrderedDict()

    def _ring(self, candidates: Sequence[Server]) -> _Ring:
        key = tuple(candidates)
        rings = self._rings
        ring = rings.get(key)
        if ring is None:
            ring = rings[key] = _Ring(key)
            if len(rings) > _RING_CACHE_SIZE:
                rings.popitem(last=False)
        else:
            rings.move_to_end(key)
        return ring

    def choose(self, candidates: Sequence[Server], key: bytes) -> Server:
        return self._ring(candidates).find(key)


@implementer(IBalancer)
class IPHash:
    """
    The same client address always to the same server, by consistent hashing
    of the whole address, IPv4 or IPv6 (not nginx's first three octets, which
    put whole networks on one server).

    All the clients behind one address (an office, a carrier NAT) go to one
    server; L{Cookie} spreads them.
    """

    name = "ip_hash"
    key = "$remote_addr"

    def __init__(self, argument: str | None = None) -> None:
        _noArgument(self.name, argument)
        self._hash = _ConsistentHash()

    def pick(self, candidates: Sequence[Server], view: RequestView) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        return self._hash.choose(candidates, clientAddress(view))

    def _pickSteady(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float, view
    ) -> Server:
        return self.pick(candidates, view)

    def serversChanged(self) -> None:
        # A weight changed: the rings, which hold the points, are built anew.
        self._hash = _ConsistentHash()


@implementer(IBalancer)
class Hash:
    """
    The same key always to the same server, by consistent hashing of a value
    of the request: C{hash $cookie_sid}, C{hash $host$uri} (see
    L{parseHashKey}).  nginx's trailing C{consistent} is accepted, and
    changes nothing: hashing here is always consistent.

    Requests without the value (no such cookie, say) all share the empty
    key, and so one server.
    """

    name = "hash"

    def __init__(self, argument: str | None = None) -> None:
        words = (argument or "").split()
        if words[1:] == ["consistent"]:
            words.pop()
        if not words:
            raise ValueError("hash needs a key, e.g. hash $request_uri")
        if len(words) > 1:
            raise ValueError(
                f"hash takes one key without spaces, got {argument.strip()!r}"
                " (write variables side by side to combine them: $host$uri)"
            )
        self.key = words[0]
        self._keyOf = parseHashKey(words[0])
        self._hash = _ConsistentHash()

    def pick(self, candidates: Sequence[Server], view: RequestView) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        return self._hash.choose(candidates, self._keyOf(view))

    def _pickSteady(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float, view
    ) -> Server:
        return self.pick(candidates, view)

    def serversChanged(self) -> None:
        # A weight changed: the rings, which hold the points, are built anew.
        self._hash = _ConsistentHash()


def serverID(server: Server) -> bytes:
    """
    The id of C{server} that a L{Cookie} cookie holds: its C{route=} value
    when it has one, else an opaque, stable one, the first 16 hex digits
    of the SHA-256 of its name.  It tells clients nothing of the address
    and survives restarts and reordering.
    """
    route = server.config.route
    if route is not None:
        return route.encode("ascii")
    return hashlib.sha256(server.name.encode("utf-8")).hexdigest()[:16].encode("ascii")


@implementer(IBalancer, IAffinity)
class Cookie:
    """
    Sticky sessions: a client is sent back to the server named by the cookie
    C{NAME} (default C{manualb_server}) that manualb set on its first
    response.

    A request without the cookie, or whose cookie names a server that cannot
    take it (down, or gone from the configuration), is balanced by smooth
    weighted round robin and the response sets the cookie, C{NAME=ID; Path=/;
    HttpOnly}, with the server's L{serverID}; the options after the name
    (C{secure samesite=Lax max_age=1d}...) set its attributes
    (L{manualb.stickycookie}).  Unlike L{IPHash}, many clients
    behind one address spread over the servers.

    The cookie goes on the response of the server that answers (see
    L{IAffinity}): after a retry, the one that names the server retried.
    """

    name = "cookie"

    def __init__(self, argument: str | None = None) -> None:
        settings = parseCookieArgument(argument)
        self.cookieName = cookieName = settings.name
        self.key = "cookie " + cookieName
        self._name = cookieName.encode("ascii")
        self._attributes = settings.attributes.encode("ascii")
        self._ids: dict[Server, bytes] = {}
        self._rotation = _SmoothWeighted()

    def _idOf(self, server: Server) -> bytes:
        id = self._ids.get(server)
        if id is None:
            id = self._ids[server] = serverID(server)
        return id

    def _cookieServer(self, candidates: Sequence[Server], view: RequestView) -> Server | None:
        """
        The candidate the request's cookie names, or the only candidate, or
        L{None}: the rotation chooses.
        """
        wanted = view.cookie(self._name)
        if wanted is not None:
            for server in candidates:
                if self._idOf(server) == wanted:
                    return server
        if len(candidates) == 1:
            return candidates[0]
        return None

    def pick(self, candidates: Sequence[Server], view: RequestView) -> Server:
        server = self._cookieServer(candidates, view)
        return server if server is not None else self._rotation.choose(candidates)

    def _pickSteady(
        self, candidates: Sequence[Server], weights: Sequence[float], total: float, view
    ) -> Server:
        server = self._cookieServer(candidates, view)
        if server is not None:
            return server
        return self._rotation.chooseWeighted(candidates, weights, total)

    def affinityHeaders(
        self, server: Server, view: RequestView
    ) -> Sequence[tuple[bytes, bytes]]:
        """
        C{Set-Cookie} naming C{server}, unless the client's cookie names it
        already.
        """
        id = self._idOf(server)
        if view.cookie(self._name) == id:
            return ()
        return ((b"Set-Cookie", self._name + b"=" + id + self._attributes),)


#: The built-in strategies by name, each a factory taking the argument text
#: (or L{None}).
BALANCERS: dict[str, Callable[[str | None], IBalancer]] = {
    factory.name: factory for factory in (RoundRobin, LeastConn, IPHash, Hash, Random, Cookie)
}


def makeBalancer(method: str, argument: str | None = None) -> IBalancer:
    """
    The strategy that C{balance = METHOD ARGUMENT} names: a built-in one, or
    the dotted name of a factory of the user's, called with C{argument}.

    @raise ValueError: For an unknown method, an argument the strategy does
        not accept, or a factory that makes no L{IBalancer}.
    """
    factory = BALANCERS.get(method)
    if factory is None:
        if "." not in method:
            raise ValueError(
                f"unknown balancing method {method!r} (built-in: {', '.join(BALANCERS)};"
                " or the dotted name of a factory of your own)"
            )
        factory = namedAny(method)
        if not callable(factory):
            raise ValueError(f"{method} is not a balancer factory: it cannot be called")
    balancer = factory(argument)
    if not IBalancer.providedBy(balancer):
        raise ValueError(
            f"{method} made {balancer!r}, which does not provide IBalancer"
            " (decorate its class with @implementer(IBalancer))"
        )
    return balancer


def parseBalance(text: str) -> tuple[str, str | None]:
    """
    Read C{balance = METHOD [ARGUMENT]}: the method and its argument
    (L{None} if none), checked by making the balancer once, so that a bad
    argument or a user's factory that cannot be imported stops start-up.

    @raise ValueError: with the message to show for the key.
    """
    method, *rest = text.split(None, 1)
    argument = rest[0].strip() if rest else None
    if "." not in method and method not in BALANCERS:
        raise ValueError(
            f"unknown method {method!r} (known: {', '.join(BALANCERS)}; "
            f"or the dotted name of your own balancer's factory, such as "
            f"mypackage.balancers.Fastest)"
        )
    try:
        makeBalancer(method, argument)
    # The factory may be the user's own code, which can raise anything (an
    # ImportError, an AttributeError, a TypeError...); a built-in one raises
    # ValueError for a bad argument.  Any of them means "cannot use".
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise ValueError(f"cannot use {text!r}: {reason}") from None
    return method, argument
