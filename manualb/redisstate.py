"""
The shared state in Redis (C{[manualb] state = redis://HOST:PORT/DB}): an
L{IStateStore} that every instance naming the same Redis shares (see
L{manualb.state} for what is shared and how).

It speaks to Redis through txredisapi, a Redis client written for Twisted:
its protocols run on the reactor manualb is given, as every other
connection does (redis-py's asyncio client would need Twisted's asyncio
reactor, which manualb does not ask its users to run).  This module makes
its own connections with them, and keeps them: two (one for commands, one
subscribed to the news of the other instances), remade with back-off
(L{MIN_DELAY} doubling to L{MAX_DELAY}) whenever either is lost.  Every
command is bounded by a timeout: one that takes longer drops the connection
(a Redis that hangs is lost, not waited for), and a C{PING} every
L{PING_INTERVAL} finds a Redis that went silent.  Importing this module
imports txredisapi, which imports the global reactor: it is imported only
once a configuration names a Redis.

In Redis, under a prefix (C{manualb:}):

  - C{manualb:admin} and C{manualb:health}, hashes: the value kept under
    each key of each topic, as C{VERSION JSON};
  - C{manualb:version}: the counter of changes, which gives each its
    version;
  - C{manualb:events}, a channel: each change as C{TOPIC VERSION}, the key
    and the JSON (empty for a removal), on three lines;
  - C{manualb:rate:KEY}, a hash for each rate limit bucket: its level
    C{x}, when it was last counted C{t} (by Redis's clock), and its total
    C{n}; it expires once it would have drained.
  - C{manualb:lock:NAME}, a string for each lock held: its holder's
    token, taken with C{SET NX PX} (so that it expires when its holder
    dies), renewed and released by scripts that check the token first.

A change is kept and published by one Lua script, so that the version kept
and the one published agree.
"""

from __future__ import annotations

import json

import txredisapi
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from manualb.interfaces import IStateListener, IStateStore

__all__ = ["RedisStateStore"]

log = Logger()

#: How long, in seconds, a connection to Redis or any command may take.
TIMEOUT = 1.0
#: The first wait, in seconds, before connecting again; it doubles with
#: each attempt that fails, up to L{MAX_DELAY}.
MIN_DELAY = 0.1
MAX_DELAY = 5.0
#: How often, in seconds, the command connection is checked with C{PING}.
PING_INTERVAL = 1.0

_PUBLISH = """
local version = redis.call('INCR', KEYS[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], version .. ' ' .. ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. version .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return version
"""

# The arithmetic of manualb.sharedrates.bucketAfter, by Redis's clock.
_SYNC = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local admitted = tonumber(ARGV[2 * i])
  local bucket = redis.call('HMGET', key, 'x', 't', 'n')
  local total = 0
  local drained = -1
  if bucket[1] then
    local elapsed = now - tonumber(bucket[2])
    if elapsed < 0 then elapsed = 0 end
    drained = tonumber(bucket[1]) - rate * elapsed
    total = tonumber(bucket[3]) or 0
  end
  local level
  if admitted > 0 then
    level = math.max(0, drained + 1) + admitted - 1
    total = total + admitted
    redis.call('HSET', key, 'x', string.format('%.9f', level),
               't', string.format('%.6f', now), 'n', string.format('%d', total))
    redis.call('PEXPIRE', key, math.ceil((level + 1) / rate * 1000) + 1000)
  else
    level = math.max(-1, drained)
  end
  out[i] = {string.format('%.9f', level), string.format('%d', total)}
end
return out
"""


# Renew, or release, a lock only if the token given still holds it.
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Commands(txredisapi.RedisProtocol):
    """
    The command connection: tells its store when it is lost.
    """

    def __init__(self, store: RedisStateStore):
        super().__init__(charset="utf-8", convertNumbers=False)
        self.store = store
        self.callLater = store.reactor.callLater
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, why):
        super().connectionLost(why)
        _ended(self)
        self.store._connectionLost(self, why)


class _Subscriber(txredisapi.SubscriberProtocol):
    """
    The connection subscribed to the channel of changes: passes each on to
    its store.
    """

    def __init__(self, store: RedisStateStore):
        super().__init__(charset="utf-8", convertNumbers=False)
        self.store = store
        self.callLater = store.reactor.callLater
        self.lost: Deferred[None] = Deferred()

    def messageReceived(self, pattern, channel, message):
        self.store._message(message)

    def connectionLost(self, why):
        super().connectionLost(why)
        _ended(self)
        self.store._connectionLost(self, why)


@implementer(IStateStore)
class RedisStateStore:
    """
    The shared state in a Redis: see the module's docstring.

    @ivar reactor: What it connects and waits with.
    @ivar url: Where the Redis is (a L{manualb.state.RedisURL}).
    @ivar timeout: How long a connection or a command may take.
    @ivar prefix: Put before every key and the channel's name.
    """

    def __init__(
        self,
        reactor,
        url,
        timeout: float = TIMEOUT,
        prefix: str = "manualb:",
        minDelay: float = MIN_DELAY,
        maxDelay: float = MAX_DELAY,
    ):
        self.reactor = reactor
        self.url = url
        self.description = str(url)
        self.timeout = timeout
        self.prefix = prefix
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self.channel = prefix + "events"
        self._listener: IStateListener | None = None
        self._commands: _Commands | None = None
        self._subscriber: _Subscriber | None = None
        self._protocols: set = set()
        self._delay = minDelay
        self._retry = None
        self._connecting: Deferred | None = None
        self._ping: LoopingCall | None = None
        self._stopped = True

    @property
    def connected(self) -> bool:
        return self._commands is not None

    # Connecting.

    def start(self, listener: IStateListener) -> None:
        self._listener = listener
        self._stopped = False
        self._connect()

    def stop(self) -> Deferred[None]:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None
        if self._connecting is not None:
            self._connecting.cancel()
        waits = []
        for protocol in list(self._protocols):
            waits.append(protocol.lost)
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            else:
                _ended(protocol)
        self._commands = self._subscriber = None
        return gatherResults(waits).addCallback(lambda ignored: None)

    def _open(self, protocol) -> Deferred:
        """
        Connect C{protocol} to the Redis, authenticate and select the
        database, within the timeout.
        """
        url = self.url
        endpoint = HostnameEndpoint(self.reactor, url.host, url.port, timeout=self.timeout)
        self._protocols.add(protocol)
        protocol.lost.addCallback(lambda ignored: self._protocols.discard(protocol))
        d = connectProtocol(endpoint, protocol)

        def notConnected(reason):
            _ended(protocol)
            return reason

        d.addErrback(notConnected)
        if url.password is not None:
            d.addCallback(lambda p: p.auth(url.password, url.username))
        if url.db:
            d.addCallback(lambda ignored: protocol.select(url.db))
        d.addCallback(lambda ignored: protocol)
        return d

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        commands = _Commands(self)
        subscriber = _Subscriber(self)
        d = self._open(commands)
        d.addCallback(lambda ignored: self._open(subscriber))
        d.addCallback(lambda ignored: subscriber.subscribe(self.channel))
        d.addTimeout(3 * self.timeout, self.reactor)
        self._connecting = d

        def connected(ignored):
            self._connecting = None
            if self._stopped:
                return
            self._commands = commands
            self._subscriber = subscriber
            self._delay = self.minDelay
            self._ping = LoopingCall(self._checkAlive)
            self._ping.clock = self.reactor
            self._ping.start(PING_INTERVAL, now=False)
            self._listener.stateConnected()

        def failed(reason):
            self._connecting = None
            for protocol in (commands, subscriber):
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
            if self._stopped:
                return
            self._listener.stateLost(_reason(reason))
            self._later()

        d.addCallbacks(connected, failed)

    def _later(self) -> None:
        """
        Connect again after the back-off's delay.
        """
        if self._stopped or self._retry is not None or self._connecting is not None:
            return
        self._retry = self.reactor.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, self.maxDelay)

    def _connectionLost(self, protocol, why) -> None:
        if protocol is not self._commands and protocol is not self._subscriber:
            return
        for other in (self._commands, self._subscriber):
            if other is not protocol and other is not None and other.transport is not None:
                other.transport.abortConnection()
        self._commands = self._subscriber = None
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None
        if self._stopped:
            return
        self._listener.stateLost(_reason(why))
        self._later()

    def _checkAlive(self) -> None:
        self._call("PING").addErrback(lambda reason: None)

    # Commands.

    def _call(self, name: str, *args) -> Deferred:
        """
        Run the command C{name} of the command connection, within the
        timeout: one that takes longer drops the connection.
        """
        commands = self._commands
        if commands is None:
            return _failed(ConnectionError("%s cannot be reached" % (self.description,)))
        d = maybeDeferred(commands.execute_command, name, *args)
        d.addTimeout(self.timeout, self.reactor)

        def failed(reason):
            if reason.check(defer.TimeoutError, error.TimeoutError) and commands.transport:
                log.warn(
                    "Shared state: {store} took more than {timeout}s to answer; "
                    "dropping the connection",
                    store=self.description,
                    timeout=self.timeout,
                )
                commands.transport.abortConnection()
            return reason

        d.addErrback(failed)
        return d

    def _script(self, script: str, keys, args) -> Deferred:
        """
        Run a Lua script (Redis keeps it compiled, by its digest).
        """
        return self._call("EVAL", script, len(keys), *keys, *args)

    def publish(self, topic: str, key: str, value: dict | None) -> Deferred[int]:
        data = "" if value is None else json.dumps(value, sort_keys=True)
        d = self._script(
            _PUBLISH,
            [self.prefix + topic, self.prefix + "version"],
            [topic, key, data, self.channel],
        )
        return d.addCallback(int)

    def read(self, topic: str) -> Deferred[dict]:
        d = self._call("HGETALL", self.prefix + topic)

        def parsed(reply):
            found = {}
            pairs = reply if isinstance(reply, list) else []
            for field, value in zip(pairs[::2], pairs[1::2]):
                entry = _entry(value)
                if entry is not None and isinstance(field, str):
                    found[field] = entry
            return found

        return d.addCallback(parsed)

    def syncBuckets(self, counts) -> Deferred[list[tuple[float, int]]]:
        if not counts:
            return succeed([])
        keys = [self.prefix.encode("utf-8") + b"rate:" + key for key, rate, admitted in counts]
        args = []
        for key, rate, admitted in counts:
            args += [repr(float(rate)), str(int(admitted))]
        d = self._script(_SYNC, keys, args)
        return d.addCallback(lambda reply: [(float(x), int(n)) for x, n in reply])

    def lock(self, name: str, token: str, ttl: float) -> Deferred[bool]:
        d = self._call("SET", self.prefix + "lock:" + name, token, "NX", "PX", _milliseconds(ttl))
        return d.addCallback(lambda reply: reply is not None)

    def renewLock(self, name: str, token: str, ttl: float) -> Deferred[bool]:
        d = self._script(_RENEW_LOCK, [self.prefix + "lock:" + name], [token, _milliseconds(ttl)])
        return d.addCallback(lambda reply: bool(int(reply)))

    def unlock(self, name: str, token: str) -> Deferred[bool]:
        d = self._script(_UNLOCK, [self.prefix + "lock:" + name], [token])
        return d.addCallback(lambda reply: bool(int(reply)))

    # News.

    def _message(self, message) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        if not isinstance(message, str):
            return
        head, _, rest = message.partition("\n")
        key, _, data = rest.partition("\n")
        topic, _, version = head.partition(" ")
        try:
            version = int(version)
            value = json.loads(data) if data else None
        except ValueError:
            log.warn("Shared state: a change in {store} cannot be read", store=self.description)
            return
        if self._listener is not None:
            self._listener.stateChanged(topic, key, value, version)


def _milliseconds(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


def _ended(protocol) -> None:
    """
    Fire the C{lost} of C{protocol}, once.
    """
    if not protocol.lost.called:
        protocol.lost.callback(None)


def _entry(value) -> tuple[int, dict] | None:
    """
    A kept value, C{VERSION JSON}, as C{(version, value)}; L{None} when it
    cannot be read.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    version, _, data = value.partition(" ")
    try:
        return int(version), json.loads(data)
    except ValueError:
        return None


def _reason(reason) -> str:
    value = getattr(reason, "value", reason)
    return "%s: %s" % (type(value).__name__, value) if str(value) else type(value).__name__


def _failed(error: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(error)
    return d
