"""
Request rate limits, as nginx's C{limit_req}: C{rate = 10r/s burst=20
nodelay}, with a bucket for each value of a key (C{$remote_addr} by
default; C{$route}, C{$http_x_api_key}... in the syntax of
L{manualb.variables}).

The algorithm is nginx's leaky bucket.  A bucket holds a level, C{excess}:
the requests let through that the rate has not yet drained, which falls by
C{rate} a second.  A request raises the drained level by one, counted from
the last request let in (at C{last}), and never below 0:

    excess = max(0, excess - rate * (now - last) + 1)   (0 for a new bucket)

  - C{excess > burst}: the request is refused (429), and the bucket is left
    as it was: a refused request costs nothing.  It would be let in after
    C{(excess - burst) / rate} seconds (C{Retry-After}).
  - else the bucket keeps C{excess}, and the request goes on: at once with
    C{nodelay}; else after C{excess / rate} seconds, the time the rate takes
    to drain the requests let in before it, so that requests reach the
    backends at no more than C{rate} (nginx's delaying of the excess).

C{burst = 0} allows one request each C{1 / rate} seconds and refuses any
earlier one.  In terms of tokens, a bucket holds C{burst + 1} tokens and
gains C{rate} a second; a request takes one, waiting for it when C{excess}
is above 0 (L{manualb.interfaces.IRateLimitStore}).

The buckets live in an L{IRateLimitStore}; L{MemoryStore}, the default,
keeps them in the process, in bounded memory: a bucket whose next request
would be at level 0 (C{rate * (now - last) >= excess + 1}: it holds all its
tokens again) is forgotten, being the same as a new one, and beyond C{maxBuckets} buckets
the one used longest ago is dropped, so that a client that cycles through
addresses or keys cannot make it grow without limit; at worst it makes the
store forget the oldest buckets.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from manualb.config import RateLimitConfig
from manualb.interfaces import IRateLimiter, IRateLimitStore
from manualb.records import RateDecision
from manualb.variables import parseKey
from manualb.view import RequestView

__all__ = ["MemoryStore", "RateLimiter", "parseRate"]

# Requests counted in floating point: a level this close to a limit is at it.
_EPSILON = 1e-9

#: Keys longer than this are kept as a digest, so that a bucket's memory does
#: not depend on what a client sends.
_KEY_LENGTH = 64

_RATE = re.compile(r"(?P<count>[0-9]+(?:\.[0-9]*)?)r/(?P<unit>[sm])")
_BURST = re.compile(r"burst=(?P<burst>[0-9]+)")
_SYNTAX = "10r/s or 600r/m, optionally followed by burst=N and nodelay, or off"


def parseRate(text: str, key: str = "$remote_addr") -> RateLimitConfig:
    """
    Read a rate limit as C{rate} writes it, nginx's C{limit_req} syntax: a
    rate in requests a second (C{10r/s}) or a minute (C{600r/m}), then
    optionally C{burst=N} (requests beyond the rate let through) and
    C{nodelay} (let the burst through at once rather than delay it to the
    rate), in any order; or C{off} (rate 0: no limit, to lift a global limit
    on a route).

    @param key: What a bucket is kept for (C{rate_key}), in the syntax of
        L{manualb.variables.parseKey}.

    @raise ValueError: When C{text} or C{key} is not valid, saying why.
    """
    parseKey(key)
    words = text.split()
    if words == ["off"]:
        return RateLimitConfig(rate=0.0, key=key)
    if not words:
        raise ValueError(f"the rate is empty; write {_SYNTAX}")
    match = _RATE.fullmatch(words[0])
    if match is None:
        if "off" in words:
            raise ValueError(f"rate off takes nothing else, got {text.strip()!r}")
        raise ValueError(f"rate {text.strip()!r} is not valid; write {_SYNTAX}")
    rate = float(match["count"])
    if match["unit"] == "m":
        rate /= 60
    if rate <= 0:
        raise ValueError(f"rate {words[0]!r} is not above 0 (write off for no limit)")
    burst: int | None = None
    nodelay = False
    for word in words[1:]:
        burstMatch = _BURST.fullmatch(word)
        if burstMatch is not None and burst is None:
            burst = int(burstMatch["burst"])
        elif word == "nodelay" and not nodelay:
            nodelay = True
        elif burstMatch is not None or word == "nodelay":
            raise ValueError(f"{word.partition('=')[0]} is given twice in rate {text.strip()!r}")
        else:
            raise ValueError(
                f"{word!r} in rate {text.strip()!r} is not valid; write {_SYNTAX}"
            )
    return RateLimitConfig(rate=rate, burst=burst or 0, nodelay=nodelay, key=key)


@implementer(IRateLimitStore)
class MemoryStore:
    """
    The buckets of rate limits, in the process (see the module's docstring
    for the algorithm).

    Each bucket is its level, the time it was last counted and its rate,
    kept in order of use.  Every L{take} looks at the two buckets used
    longest ago and forgets them if they have drained (nginx expires its
    states the same way), so idle buckets go without a timer; and when the
    store holds C{maxBuckets}, the bucket used longest ago goes, drained or
    not.

    @ivar maxBuckets: The most buckets kept.
    """

    def __init__(self, maxBuckets: int = 65536) -> None:
        self.maxBuckets = maxBuckets
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: bytes, rate: float, burst: int, now: float) -> float:
        if len(key) > _KEY_LENGTH:
            key = hashlib.blake2b(key, digest_size=20).digest()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            excess = 0.0
        else:
            excess = bucket[0] - rate * (now - bucket[1]) + 1
            if excess < _EPSILON:
                excess = 0.0
        if excess > burst + _EPSILON:
            return excess / rate
        if bucket is None:
            self._expire(now)
            buckets[key] = [excess, now, rate]
            if len(buckets) > self.maxBuckets:
                buckets.popitem(last=False)
        else:
            bucket[0] = excess
            bucket[1] = now
            bucket[2] = rate
            buckets.move_to_end(key)
        return min(excess, burst) / rate

    def _expire(self, now: float) -> None:
        """
        Forget up to two of the buckets used longest ago that hold all their
        tokens again.
        """
        buckets = self._buckets
        for _ in range(2):
            if not buckets:
                return
            key = next(iter(buckets))
            excess, last, rate = buckets[key]
            if excess + 1 - rate * (now - last) > _EPSILON:
                return
            del buckets[key]


@implementer(IRateLimiter)
class RateLimiter:
    """
    One rate limit (a C{rate} of C{[gatekeeper]} or of a route), counting
    requests in the buckets of C{store}.

    @param config: The limit.
    @param store: Where the buckets are; limiters that share one need
        different C{zone}s.
    @param clock: Tells the time.
    @param zone: Put before every key in C{store}, to keep this limiter's
        buckets apart from others'.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        store: IRateLimitStore,
        clock: IReactorTime,
        zone: bytes = b"",
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.zone = zone
        self._keyOf = parseKey(config.key)
        self._limit = config.burst / config.rate if config.rate else 0.0

    def check(self, request: RequestView, route: str | None = None) -> RateDecision:
        """
        Count C{request} of the route named C{route} against its bucket.

        @return: Whether it may go on, and after what delay; or, refused,
            after how long one would be let in.
        """
        config = self.config
        value = self._keyOf(request, route)
        bucket = config.key + "=" + _printable(value)
        if not config.rate:
            return RateDecision(bucket, True)
        wait = self.store.take(self.zone + value, config.rate, config.burst, self.clock.seconds())
        if wait > self._limit:
            return RateDecision(bucket, False, retryAfter=wait - self._limit)
        return RateDecision(bucket, True, 0.0 if config.nodelay else wait)


def _printable(value: bytes) -> str:
    """
    A key's value for a decision record: printable ASCII, at most 64
    characters.
    """
    text = value[:64].decode("ascii", "replace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
    return text
