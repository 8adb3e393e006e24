"""
State shared between instances of manualb: every process, on every machine,
whose C{[manualb]} names the same store (C{state = redis://HOST:PORT/DB}, see
L{manualb.redisstate}) shares

  - the admin API's changes (C{drain}, C{up}, C{down}, a weight): applied
    where they are made, then published; every other instance applies them
    when it hears of them (a publish and subscribe, so within a round trip
    to the store), and on (re)connecting each reads the stored copy of all
    of them, to catch up with what it missed;
  - the health each instance sees: each probes on its own, and publishes
    its view of every server (when it changes, and every
    L{HEARTBEAT} seconds), with its name, so that the C{/api/status} of any
    instance shows what each instance sees;
  - the rate limits' buckets (L{manualb.sharedrates.SharedRateStore});
  - the certificates (and their keys) obtained by ACME, under the topic
    C{acme}, and the lock that lets one instance at a time obtain a name's
    (see L{manualb.autotls}).

Without C{state}, all of it stays in the process, as it always has.

Nothing of a client's request waits on the store: the balancer serves on the
state it knows, which the store's news update in the background.  When the
store cannot be reached, each instance keeps serving on the last state it
knew, says so once in its log (and once when the store is back), in
C{/api/status} (C{sharedState.connected}) and in the metric
C{manualb_shared_state_connected}; the store retries with back-off, and each
instance reads the stored state again when it returns, then publishes the
admin changes made on it meanwhile, and its health view.

The rate limits' buckets are shared by L{manualb.sharedrates}, whose
docstring gives the algorithm and its error bound.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from manualb.interfaces import IStateListener, IStateStore
from manualb.selection import ADMIN_STATES, Pool
from manualb.sharedrates import SharedRateStore, bucketAfter
from manualb.syntax import Section

__all__ = [
    "HEARTBEAT",
    "MemoryStateStore",
    "RedisURL",
    "SharedState",
    "defaultInstance",
    "parseStateKeys",
    "parseStateURL",
]

log = Logger()

#: How often, in seconds, an instance looks whether its health view
#: changed, and publishes it if so.
HEALTH_INTERVAL = 0.5
#: How often, in seconds, an instance publishes its health view even when
#: it has not changed, to show that it is alive.
HEARTBEAT = 10.0
#: After how long without news an instance's view is shown as stale.
STALE = 3 * HEARTBEAT


_TOPICS = ("admin", "health", "acme", "acme-challenges")


# The configuration keys.


class RedisURL:
    """
    Where a Redis is: C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]}.

    @ivar host: Its host name or address.
    @ivar port: Its TCP port (6379 unless given).
    @ivar db: The number of its database (0 unless given).
    @ivar username: The user to authenticate as, or L{None}.
    @ivar password: The password to authenticate with, or L{None} for none.
    """

    def __init__(
        self,
        host: str,
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
    ):
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password

    def __str__(self) -> str:
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "redis://%s:%d/%d" % (host, self.port, self.db)


def parseStateURL(text: str) -> RedisURL | None:
    """
    Read the value of C{state}: C{memory} (the state stays in the process:
    L{None}) or C{redis://HOST:PORT/DB}.

    @raise ValueError: When C{text} is neither, saying why.
    """
    text = text.strip()
    if text == "memory":
        return None
    syntax = "write redis://HOST:PORT/DB (such as redis://127.0.0.1:6379/0) or memory"
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as e:
        raise ValueError(f"{text!r} is not valid ({e}); {syntax}") from None
    if url.scheme != "redis":
        raise ValueError(f"{text!r} is not a redis:// URL; {syntax}")
    if not url.hostname:
        raise ValueError(f"{text!r} names no host; {syntax}")
    if url.query or url.fragment:
        raise ValueError(f"{text!r} has a query or fragment, which means nothing here")
    path = url.path.strip("/")
    if path and not (path.isdigit() and path.isascii()):
        raise ValueError(f"the database in {text!r} is not a number; {syntax}")
    return RedisURL(
        url.hostname,
        6379 if port is None else port,
        int(path or 0),
        url.username or None,
        url.password,
    )


def parseStateKeys(section: Section) -> tuple[str | None, str | None]:
    """
    C{state} (normalised: C{redis://HOST:PORT/DB}, or L{None} for the
    process) and C{instance} of C{[manualb]}.
    """
    state = section.single("state")
    if state is not None:
        try:
            url = parseStateURL(state)
        except ValueError as e:
            raise section.error("state", str(e)) from None
        if url is not None and (url.password is not None or url.username is not None):
            # Kept as written: it holds the credentials.
            state = state.strip()
        else:
            state = None if url is None else str(url)
    instance = section.single("instance")
    if instance is not None:
        instance = instance.strip()
        if not instance or not instance.isprintable() or len(instance) > 200:
            raise section.error(
                "instance", "the instance name must be 1 to 200 printable characters"
            )
    return state, instance


def defaultInstance() -> str:
    """
    The name of this instance when C{instance} is not given:
    C{HOSTNAME:PID}.
    """
    return "%s:%d" % (socket.gethostname(), os.getpid())


# A store in the process.


class _MemoryData:
    """
    What the L{MemoryStateStore}s made from one another share: the stored
    state, the stores to tell, and whether it can be reached.
    """

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self.connected = True
        self.stores: list[MemoryStateStore] = []
        self.topics: dict[str, dict[str, tuple[int, dict]]] = {t: {} for t in _TOPICS}
        self.buckets: dict[bytes, list[float]] = {}
        self.locks: dict[str, tuple[str, float]] = {}
        self.version = 0


@implementer(IStateStore)
class MemoryStateStore:
    """
    An L{IStateStore} in the process.  The stores made by L{another} share
    one state, as instances that name the same Redis do: what several
    balancers of one process (or one test) share.  Its buckets count as
    the Redis script does (L{bucketAfter}).
    """

    description = "memory"

    def __init__(self, clock: IReactorTime, data: _MemoryData | None = None):
        self._data = _MemoryData(clock) if data is None else data
        self.listener: IStateListener | None = None

    @property
    def connected(self) -> bool:
        return self._data.connected

    def another(self) -> MemoryStateStore:
        """
        Another store of the same state, for another balancer.
        """
        return MemoryStateStore(self._data.clock, self._data)

    def start(self, listener: IStateListener) -> None:
        self.listener = listener
        self._data.stores.append(self)
        if self._data.connected:
            listener.stateConnected()

    def stop(self) -> Deferred[None]:
        if self in self._data.stores:
            self._data.stores.remove(self)
        return succeed(None)

    def lose(self, reason: str = "connection lost") -> None:
        """
        Make the state unreachable from every store of it, as Redis
        stopping does.
        """
        self._data.connected = False
        for store in list(self._data.stores):
            store.listener.stateLost(reason)

    def restore(self) -> None:
        """
        Make the state reachable again.
        """
        self._data.connected = True
        for store in list(self._data.stores):
            store.listener.stateConnected()

    def _check(self) -> None:
        if not self._data.connected:
            raise ConnectionError("the state store cannot be reached")

    def publish(self, topic: str, key: str, value: dict | None) -> Deferred[int]:
        try:
            self._check()
        except ConnectionError as e:
            return _failed(e)
        data = self._data
        data.version += 1
        version = data.version
        if value is None:
            data.topics[topic].pop(key, None)
        else:
            data.topics[topic][key] = (version, value)
        for store in list(data.stores):
            store.listener.stateChanged(topic, key, value, version)
        return succeed(version)

    def read(self, topic: str) -> Deferred[dict]:
        try:
            self._check()
        except ConnectionError as e:
            return _failed(e)
        return succeed(dict(self._data.topics[topic]))

    def syncBuckets(self, counts) -> Deferred[list[tuple[float, int]]]:
        try:
            self._check()
        except ConnectionError as e:
            return _failed(e)
        now = self._data.clock.seconds()
        buckets = self._data.buckets
        results = []
        for key, rate, admitted in counts:
            level, total = bucketAfter(buckets.get(key), rate, admitted, now)
            if admitted:
                buckets[key] = [level, now, total]
            results.append((level, total))
        return succeed(results)


    def _held(self, name: str) -> str | None:
        """
        The token that holds the lock C{name} now, if any.
        """
        held = self._data.locks.get(name)
        if held is None or held[1] <= self._data.clock.seconds():
            return None
        return held[0]

    def lock(self, name: str, token: str, ttl: float) -> Deferred[bool]:
        try:
            self._check()
        except ConnectionError as e:
            return _failed(e)
        if self._held(name) is not None:
            return succeed(False)
        self._data.locks[name] = (token, self._data.clock.seconds() + ttl)
        return succeed(True)

    def renewLock(self, name: str, token: str, ttl: float) -> Deferred[bool]:
        try:
            self._check()
        except ConnectionError as e:
            return _failed(e)
        if self._held(name) != token:
            return succeed(False)
        self._data.locks[name] = (token, self._data.clock.seconds() + ttl)
        return succeed(True)

    def unlock(self, name: str, token: str) -> Deferred[bool]:
        try:
            self._check()
        except ConnectionError as e:
            return _failed(e)
        if self._held(name) != token:
            return succeed(False)
        del self._data.locks[name]
        return succeed(True)


def _failed(error: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(error)
    return d


# The whole.


@implementer(IStateListener)
class SharedState:
    """
    The state of one balancer that it shares through an L{IStateStore}: see
    the module's docstring.

    @ivar store: Where the state is.
    @ivar pools: The balancer's pools, by name: the same mapping, whose
        contents a reload replaces.
    @ivar instance: This instance's name.
    @ivar origin: This process's own mark on the changes it publishes: its
        instance name, process id and a random part.
    @ivar rates: The rate limits' buckets.
    @ivar connected: Whether the store was reached (L{None} before the first
        answer).
    @ivar since: When it was last reached or lost, by the clock.
    @ivar admin: The latest admin change of each server (C{"POOL HOST:PORT"})
        as C{(version, change)}.
    @ivar views: The health view of each instance, as C{(version, view,
        received)}.
    @ivar listeners: More L{IStateListener}s, told all the store says (the
        certificates of L{manualb.autotls.AutoTLS}, under the topic
        C{acme}).
    """

    def __init__(
        self,
        store: IStateStore,
        pools: Mapping[str, Pool],
        clock: IReactorTime,
        instance: str | None = None,
    ):
        self.store = store
        self.pools = pools
        self.clock = clock
        self.instance = instance or defaultInstance()
        # Who made a change, to tell this process's own news from others'
        # even when several processes share one instance name.
        self.origin = "%s %d %s" % (self.instance, os.getpid(), uuid.uuid4().hex[:12])
        self.rates = SharedRateStore(store, clock)
        self.connected: bool | None = None
        self.since = clock.seconds()
        self.admin: dict[str, tuple[int, dict]] = {}
        self.views: dict[str, tuple[int, dict, float]] = {}
        self._unpublished: dict[str, dict] = {}
        self._published: tuple[dict, float] | None = None
        self._loop: LoopingCall | None = None
        self.listeners: list[IStateListener] = []

    def start(self) -> None:
        """
        Connect to the store, and start synchronising.
        """
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.publishHealth)
        self._loop.clock = self.clock
        self._loop.start(HEALTH_INTERVAL, now=False)
        self.rates.start()
        self.store.start(self)

    def stop(self) -> Deferred[None]:
        """
        Stop synchronising, remove this instance's health view from the
        store (when it can be reached), and disconnect.

        @return: Fires once disconnected.
        """
        if self._loop is None:
            return succeed(None)
        if self._loop.running:
            self._loop.stop()
        self.rates.stop()
        if self.store.connected:
            d = self.store.publish("health", self.instance, None)
            d.addErrback(lambda reason: None)
        else:
            d = succeed(None)
        d.addCallback(lambda ignored: self.store.stop())
        return d

    # What the store says.

    def stateConnected(self) -> None:
        if self.connected is False:
            log.info(
                "Shared state: {store} can be reached again; resynchronising",
                store=self.store.description,
            )
        elif self.connected is None:
            log.info(
                "Shared state: in {store}, as instance {instance}",
                store=self.store.description,
                instance=self.instance,
            )
        self.connected = True
        self.since = self.clock.seconds()
        self._published = None
        # The store may have lost everything meanwhile (a Redis restarted
        # empty counts its versions from 1 again): what it holds now, and
        # what it publishes from now on, is newer than anything known.
        self.admin = {key: (0, value) for key, (version, value) in self.admin.items()}
        self.views = {key: (0, view, at) for key, (version, view, at) in self.views.items()}
        admin = self.store.read("admin")
        admin.addCallback(self._readAdmin)
        admin.addErrback(self._readFailed, "admin changes")
        views = self.store.read("health")
        views.addCallback(self._readViews)
        views.addErrback(self._readFailed, "health views")
        for listener in list(self.listeners):
            listener.stateConnected()

    def stateLost(self, reason: str) -> None:
        for listener in list(self.listeners):
            listener.stateLost(reason)
        if self.connected is False:
            return
        self.connected = False
        self.since = self.clock.seconds()
        log.warn(
            "Shared state: {store} cannot be reached ({reason}); serving on the "
            "last state known, and trying again",
            store=self.store.description,
            reason=reason,
        )

    def stateChanged(self, topic: str, key: str, value: dict | None, version: int) -> None:
        for listener in list(self.listeners):
            listener.stateChanged(topic, key, value, version)
        if topic == "admin":
            self._adminChanged(key, value, version)
        elif topic == "health":
            known = self.views.get(key)
            if known is not None and known[0] >= version:
                return
            if value is None:
                self.views.pop(key, None)
            elif isinstance(value, dict):
                self.views[key] = (version, value, self.clock.seconds())

    def _readFailed(self, reason, what: str) -> None:
        log.warn(
            "Shared state: the {what} of {store} could not be read: {reason}",
            what=what,
            store=self.store.description,
            reason=reason.getErrorMessage(),
        )

    def _readAdmin(self, stored: dict) -> None:
        for key, (version, value) in stored.items():
            self._adminChanged(key, value, version)
        # What was changed here while the store was lost is newer; what the
        # store lost (a Redis restarted empty) is given back to it.
        unpublished, self._unpublished = self._unpublished, {}
        missing = {
            key: value
            for key, (version, value) in self.admin.items()
            if key not in stored and key not in unpublished and not version
        }
        for key, change in {**missing, **unpublished}.items():
            self._publishChange(key, change)

    def _readViews(self, stored: dict) -> None:
        now = self.clock.seconds()
        for key, (version, value) in stored.items():
            known = self.views.get(key)
            if isinstance(value, dict) and (known is None or known[0] < version):
                self.views[key] = (version, value, now)
        self.publishHealth()

    # Admin changes.

    def serverChanged(self, pool: str, server: str, change: dict) -> None:
        """
        Publish a change the admin API made to C{server} of C{pool} here, so
        that every instance makes it.
        """
        key = "%s %s" % (pool, server)
        known = self.admin.get(key)
        merged = {} if known is None else dict(known[1])
        merged.update(self._unpublished.get(key, {}))
        merged.update(change)
        merged["by"] = self.instance
        merged["origin"] = self.origin
        merged["time"] = self.clock.seconds()
        if not self.store.connected:
            self._unpublished[key] = merged
            log.warn(
                "Shared state: {store} cannot be reached; the change of upstream {pool} "
                "server {server} applies here only until it can",
                store=self.store.description,
                pool=pool,
                server=server,
            )
            return
        self._publishChange(key, merged)

    def _publishChange(self, key: str, change: dict) -> None:
        d = self.store.publish("admin", key, change)

        def published(version):
            known = self.admin.get(key)
            if known is None or known[0] < version:
                self.admin[key] = (version, change)

        def failed(reason):
            self._unpublished[key] = change
            log.warn(
                "Shared state: the change of {server} could not be published ({reason}); "
                "it applies here only until it can",
                server=key,
                reason=reason.getErrorMessage(),
            )

        d.addCallbacks(published, failed)

    def _adminChanged(self, key: str, value: Any, version: int) -> None:
        known = self.admin.get(key)
        if known is not None and known[0] >= version:
            return
        if not isinstance(value, dict):
            self.admin.pop(key, None)
            return
        self.admin[key] = (version, value)
        if value.get("origin") == self.origin or key in self._unpublished:
            return
        self._apply(key, value)

    def _apply(self, key: str, value: dict, quiet: bool = False) -> bool:
        """
        Make the change C{value} to the server C{key} names, if this
        instance has it.

        @return: Whether anything changed.
        """
        poolName, _, serverName = key.partition(" ")
        pool = self.pools.get(poolName)
        server = pool.server(serverName) if pool is not None else None
        if server is None:
            return False
        state = value.get("state")
        weight = value.get("weight")
        changed = False
        if state in ADMIN_STATES and server.adminState != state:
            server.setState(state)
            changed = True
        if type(weight) is int and 1 <= weight <= 1000000 and server.config.weight != weight:
            server.setWeight(weight)
            changed = True
        if changed:
            pool.serversChanged()
            pool.monitor.log.note(
                server.name,
                server.state,
                "admin API of instance %s: weight %d" % (value.get("by", "?"), server.config.weight),
            )
            if not quiet:
                log.info(
                    "Shared state: upstream {pool} server {server} changed by instance "
                    "{by}: now {state}, weight {weight}",
                    pool=poolName,
                    server=serverName,
                    by=value.get("by", "?"),
                    state=server.state,
                    weight=server.config.weight,
                )
        return changed

    def poolsChanged(self) -> None:
        """
        Make the admin changes known to the servers of new pools (after a
        reload): a server that a reload adds takes the change published
        for it.
        """
        for key, (version, value) in self.admin.items():
            self._apply(key, value, quiet=True)
        for key, value in self._unpublished.items():
            self._apply(key, value, quiet=True)

    # Health.

    def view(self) -> dict:
        """
        What this instance sees of each server's health, by pool and
        server.
        """
        view: dict = {}
        for name, pool in self.pools.items():
            reasons = {}
            for event in pool.monitor.history:
                reasons[event.server] = event.reason
            view[name] = {
                server.name: {
                    "health": server.health.state,
                    "phase": server.health.phase.value,
                    "reason": reasons.get(server.name),
                }
                for server in pool.servers
            }
        return view

    def publishHealth(self) -> None:
        """
        Publish this instance's health view if it changed since it was last
        published, or L{HEARTBEAT} seconds ago.
        """
        if not self.store.connected:
            return
        view = self.view()
        now = self.clock.seconds()
        published = self._published
        if published is not None and published[0] == view and now - published[1] < HEARTBEAT:
            return
        self._published = (view, now)
        d = self.store.publish("health", self.instance, {"time": now, "upstreams": view})

        def failed(reason):
            self._published = None

        d.addErrback(failed)

    # What the admin API shows.

    def addStatus(self, status: dict) -> None:
        """
        Add to C{status} (the admin API's C{/api/status}) the shared state's
        own (C{sharedState}), and for each server, what each instance sees
        of it (C{seenBy}).
        """
        now = self.clock.seconds()
        seen: dict[tuple[str, str], dict] = {}
        instances = {}
        for instance, (version, value, received) in self.views.items():
            if instance == self.instance:
                continue
            age = now - received
            instances[instance] = {"age": age, "stale": age > STALE}
            upstreams = value.get("upstreams")
            if not isinstance(upstreams, dict):
                continue
            for poolName, servers in upstreams.items():
                if not isinstance(servers, dict):
                    continue
                for serverName, health in servers.items():
                    if isinstance(health, dict):
                        seen.setdefault((poolName, serverName), {})[instance] = dict(
                            health, age=age, stale=age > STALE
                        )
        own = self.view()
        status["sharedState"] = {
            "store": self.store.description,
            "instance": self.instance,
            "connected": bool(self.store.connected),
            "since": self.since,
            "instances": instances,
        }
        for poolName, pool in status.get("upstreams", {}).items():
            for server in pool.get("servers", ()):
                name = server["server"]
                seenBy = {self.instance: dict(own.get(poolName, {}).get(name, {}), age=0.0, stale=False)}
                seenBy.update(seen.get((poolName, name), {}))
                server["seenBy"] = seenBy


def sharedState(
    state: str | None,
    instance: str | None,
    pools: Mapping[str, Pool],
    reactor,
    store: IStateStore | None = None,
) -> SharedState | None:
    """
    The shared state of a balancer whose configuration names C{state}
    (C{redis://...}) and C{instance}, over C{pools}; or L{None} when the
    state stays in the process (no C{state}, and no C{store} given).

    @param store: The store to use rather than the one C{state} names.
    """
    if store is None:
        url = parseStateURL(state) if state is not None else None
        if url is None:
            return None
        from manualb.redisstate import RedisStateStore

        store = RedisStateStore(reactor, url)
    return SharedState(store, pools, reactor, instance)
