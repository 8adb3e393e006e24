"""
Rate limits shared between instances of manualb through an
L{manualb.interfaces.IStateStore} (C{[manualb] state}, see
L{manualb.state}).

Shared rate limits
==================

A rate limit's answer (L{manualb.interfaces.IRateLimitStore.take}) is needed
at once, on the request's path, so each instance keeps a local copy of each
bucket it uses and synchronises it with the store every L{SYNC_INTERVAL}
seconds, in the background:

  1. Locally, a bucket is nginx's leaky bucket (L{manualb.ratelimit}): its
     level C{excess} rises by one with each request let in, and falls with
     time.  It falls at C{rate - others}, not at C{rate}: C{others} is the
     rate at which the other instances let requests of the same key in, as
     the last synchronisation measured it.  The requests let in are also
     counted, per bucket, until the next synchronisation.
  2. Every L{SYNC_INTERVAL}, the buckets used since the last time are sent
     to the store in one call (L{manualb.interfaces.IStateStore.syncBuckets};
     a Lua script in Redis), each with the count of requests let in: the
     store drains its shared level at C{rate} by its own clock, adds the
     count, and answers with the new level and the bucket's running total of
     requests from every instance.
  3. The local level becomes the shared one (plus what was let in while the
     answer was on its way), and C{others} the growth of the total that was
     not this instance's, divided by the time since the last answer.

The shared level counts every request let in anywhere, and drains at the
rate, so over time the limit holds across all instances.  What one instance
does not know is what the others let in since their last synchronisation.
With N instances, a synchronisation every T seconds (L{SYNC_INTERVAL} plus
the round trip), a rate r and a burst b, the requests let in over any D
seconds are at most::

    r * D + (b + 1) + (N - 1) * (b + 1 + r * T)

against C{r * D + (b + 1)} for one instance: at worst, when a client starts
at every instance at once, each lets in a burst and T seconds of the rate
before it hears of the others.  The excess is paid back: the shared level
is then above the burst, and every instance refuses until it has drained,
so the limit holds on average.  The first request an instance sees for a
bucket it has not used yet is let in (it knows nothing of it), which the
bound counts.  With C{b = 0} and 10r/s on 3 instances synchronised every
0.1 s, a client gets at most 4 requests more than one instance would let
through, in any window.

While the store is lost, each instance limits on its own (a client can then
multiply the limit by the number of instances it reaches), and the counts
of that time are not sent.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from manualb.interfaces import IRateLimitStore, IStateStore

__all__ = ["SYNC_INTERVAL", "SharedRateStore", "bucketAfter"]

log = Logger()

#: How often, in seconds, the rate limits' buckets used are synchronised.
SYNC_INTERVAL = 0.1
#: The most buckets sent to the store in one call.
SYNC_BATCH = 256

_KEY_LENGTH = 64
_EPSILON = 1e-9
# After how many sync intervals without news a bucket's estimate of the
# other instances' rate is dropped.
_STALE_SYNCS = 5


def _bucketKey(key: bytes) -> bytes:
    if len(key) > _KEY_LENGTH:
        return hashlib.blake2b(key, digest_size=20).digest()
    return key


def bucketAfter(
    bucket: list[float] | None, rate: float, admitted: int, now: float
) -> tuple[float, int]:
    """
    The level and running total of a shared bucket C{[level, last, total]}
    (or none yet) once C{admitted} requests are added at C{now}: as
    L{manualb.ratelimit.MemoryStore} counts one request after another (the
    first request to a drained bucket leaves it at 0).  With none added,
    the level drained by now, down to -1 (a new bucket's: one request
    leaves it at 0).  The Redis script of L{manualb.redisstate} does the
    same.
    """
    if bucket is None:
        level, total, drained = -1.0, 0, -1.0
    else:
        level, last, total = bucket
        drained = level - rate * max(0.0, now - last)
    if not admitted:
        # Not clamped at 0: the next request adds one to it, and the
        # result is clamped then (a bucket drained for long is a new one).
        return max(-1.0, drained), int(total)
    level = max(0.0, drained + 1) + admitted - 1
    return level, int(total) + admitted


class _Bucket:
    """
    The local copy of a shared bucket.
    """

    __slots__ = ("excess", "last", "rate", "others", "total", "synced")

    def __init__(self, excess: float, last: float, rate: float):
        self.excess = excess
        self.last = last
        self.rate = rate
        self.others = 0.0
        self.total: int | None = None
        self.synced = last


@implementer(IRateLimitStore)
class SharedRateStore:
    """
    The buckets of rate limits, shared through an L{IStateStore}: a local
    copy of each, answered at once, synchronised in the background (see the
    module's docstring for the algorithm and its error bound).

    @ivar store: Where the shared buckets are.
    @ivar maxBuckets: The most buckets kept locally.
    """

    def __init__(
        self,
        store: IStateStore,
        clock: IReactorTime,
        interval: float = SYNC_INTERVAL,
        maxBuckets: int = 65536,
    ):
        self.store = store
        self.clock = clock
        self.interval = interval
        self.maxBuckets = maxBuckets
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()
        # The buckets used since the last synchronisation: key -> [let in,
        # rate].
        self._touched: dict[bytes, list] = {}
        # The buckets that other instances were seen using at the last
        # synchronisation: read at the next one even if not used here, so
        # that the estimate of their rate stays fresh.
        self._watched: dict[bytes, float] = {}
        self._syncing = False
        self._loop: LoopingCall | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def start(self) -> None:
        """
        Synchronise every L{interval} seconds from now on.
        """
        if self._loop is None:
            self._loop = LoopingCall(self.sync)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        """
        Stop synchronising.
        """
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def take(self, key: bytes, rate: float, burst: int, now: float) -> float:
        key = _bucketKey(key)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            excess = 0.0
        else:
            others = bucket.others
            if others and now - bucket.synced > _STALE_SYNCS * self.interval:
                # No news for long (the store is lost): the others' rate
                # is not known any more.
                others = bucket.others = 0.0
            drain = rate - others if others < rate else 0.0
            excess = bucket.excess - drain * (now - bucket.last) + 1
            if excess < _EPSILON:
                excess = 0.0
        touched = self._touched.get(key)
        if touched is None:
            touched = self._touched[key] = [0, rate]
        touched[1] = rate
        if excess > burst + _EPSILON:
            return excess / rate
        touched[0] += 1
        if bucket is None:
            self._expire(now)
            buckets[key] = _Bucket(excess, now, rate)
            if len(buckets) > self.maxBuckets:
                buckets.popitem(last=False)
        else:
            bucket.excess = excess
            bucket.last = now
            bucket.rate = rate
            buckets.move_to_end(key)
        return min(excess, burst) / rate

    def _expire(self, now: float) -> None:
        """
        Forget up to two of the buckets used longest ago that hold all their
        tokens again and wait for no synchronisation.
        """
        buckets = self._buckets
        for _ in range(2):
            if not buckets:
                return
            key, bucket = next(iter(buckets.items()))
            drain = max(0.0, bucket.rate - bucket.others)
            if key in self._touched or bucket.excess + 1 - drain * (now - bucket.last) > _EPSILON:
                return
            del buckets[key]

    def sync(self) -> Deferred[None]:
        """
        Send the counts of the buckets used since the last time to the
        store, and take its levels (see the module's docstring).  Does
        nothing while a synchronisation is under way; while the store
        cannot be reached, the counts are dropped and the buckets stay
        local.

        @return: Fires once done (never fails).
        """
        if self._syncing or not (self._touched or self._watched):
            return succeed(None)
        if not self.store.connected:
            self._touched = {}
            self._watched = {}
            return succeed(None)
        touched, self._touched = self._touched, {}
        counts = [(key, rate, admitted) for key, (admitted, rate) in touched.items()]
        counts += [(key, rate, 0) for key, rate in self._watched.items() if key not in touched]
        self._syncing = True
        calls = []
        for start in range(0, len(counts), SYNC_BATCH):
            batch = counts[start : start + SYNC_BATCH]
            d = self.store.syncBuckets(batch)
            d.addCallback(self._synced, batch)
            d.addErrback(self._syncFailed)
            calls.append(d)
        done: Deferred[None] = Deferred()
        remaining = [len(calls)]

        def ended(ignored):
            remaining[0] -= 1
            if not remaining[0]:
                self._syncing = False
                done.callback(None)

        for d in calls:
            d.addBoth(ended)
        return done

    def _synced(self, results, batch) -> None:
        now = self.clock.seconds()
        for (key, rate, admitted), (level, total) in zip(batch, results):
            level = float(level)
            total = int(total)
            bucket = self._buckets.get(key)
            if bucket is None:
                if level <= 0 and not admitted:
                    continue
                bucket = self._buckets[key] = _Bucket(level, now, rate)
                self._expire(now)
            else:
                if bucket.total is not None and now > bucket.synced:
                    others = total - bucket.total - admitted
                    bucket.others = max(0.0, others / (now - bucket.synced))
                bucket.excess = level
                bucket.last = now
            if bucket.others > 0 and level > 0:
                self._watched[key] = rate
            else:
                self._watched.pop(key, None)
            # What this instance let in while the answer was on its way.
            since = self._touched.get(key)
            if since is not None:
                bucket.excess += since[0]
            bucket.total = total
            bucket.synced = now

    def _syncFailed(self, reason) -> None:
        # The counts are lost: the requests were let in, and the shared
        # level is short of them (a bounded error, as when the store is
        # lost).
        log.debug("Shared state: rate limit buckets not synchronised: {reason}", reason=reason.value)
