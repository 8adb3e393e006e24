"""
Building the load balancer from a configuration: the pools, the sites
(L{manualb.sites}), the TCP stream proxies, the admin API,
and the listening services (stage 1, the entry).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorCore, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from manualb.accesslog import AccessLog
from manualb.web.channel import ConnectionLimit
from manualb.config import (
    Config,
    ConfigError,
    ListenerConfig,
)
from manualb.configfile import loadConfig
from manualb.gatekeeper import gatekeeperEngines
from manualb.selection import Pool, Server
from manualb.termination import (
    SNIContextFactory,
    contextFactoryFor,
    isSNI,
    isTLS,
    sniEndpoint,
)
from manualb.reloading import (
    changes as describeChanges,
    keptAsItWas,
    restartNeeded,
    servedBy,
)
from manualb.entry import ownedLines, serverEndpoint, withBacklog
from manualb.pools import buildPool
from manualb.sites import Sites
from manualb.syntax import anyPort
from manualb.web import listening
from manualb.web.tls import ServerTLSFactory
from manualb.front import serving

if TYPE_CHECKING:
    from manualb.streams import StreamProxyFactory

# What only some configurations use (automatic HTTPS, the admin listener and
# its metrics, shared state, TCP streams) is imported where it is built, so
# that a balancer without it does not carry it.

log = Logger()

class LoadBalancer:
    """
    Everything one configuration builds, ready to be served.

    Building it touches neither files nor the network: L{start} reads the
    certificates of C{[tls]}, opens the access log and starts the health
    probes; L{stop} lets the requests in flight finish, then closes every
    connection; L{close} closes them all at once.  Each fires once every
    connection is closed.

    @ivar pools: The upstream pools by name.
    @ivar resource: The proxy over every route, a L{ProxyResource} that can
        also be mounted in another L{twisted.web.server.Site}.
    @ivar site: A L{ProxySite} serving C{resource} at the root.
    @ivar sites: The site of each listener, by listener name: its own
        routes.
    @ivar redirects: For each listener with C{redirect_https}, by listener
        name, the site of its plain endpoints, whose chain answers every
        request with a redirect to https (L{redirectStages}).
    @ivar streams: The factory of each C{[stream NAME]}, by name.
    @ivar connections: The client connections of every site, counted
        against C{max_connections}.
    @ivar tls: The certificates of C{[tls]}, once read (see L{load}), or
        L{None}.
    @ivar waf: Makes the web application firewall of a configuration, or
        L{None} (see L{gatekeeperEngines}).
    @ivar rateLimiter: Makes the request rate limiter of a rate, or L{None}
        (see L{gatekeeperEngines}).
    @ivar recent: The decision records of the latest requests, kept when
        there is an admin listener (C{[manualb] admin}); else L{None}.
    @ivar admin: The admin API (its token read by L{load}), when there is
        an admin listener; else L{None}.
    @ivar shared: The state shared with other instances
        (L{manualb.state.SharedState}), when C{[manualb] state} names a
        store or C{stateStore} is given; else L{None}.
    """

    def __init__(
        self,
        config: Config,
        reactor: IReactorCore,
        accessLog: AccessLog | None = None,
        stateStore=None,
    ):
        self.config = config
        self.reactor = reactor
        self.tls: SNIContextFactory | None = None
        # Who waits for close, from its first call on.
        self._closeWaiters: list[Deferred[None]] | None = None
        self._hasClosed = False
        # Who waits for stop, and what ends the wait, while it waits.
        self._stopWaiters: list[Deferred[None]] = []
        self._stopTimer = None
        self._started = False
        # What reloads let go of: the servers draining, and what ends once
        # their old probes and connections are gone.
        self._leaving: list[Server] = []
        self._departures: list[Deferred] = []
        # The service that listening services belong to (see
        # BalancerService), the listening service of each line by its owner
        # ("listener NAME", "stream NAME" or "admin") and the line, the
        # timers that end the connections of the lines a reload closed, and
        # the stream proxies a reload removed, until their tunnels end.
        self.parent: MultiService | None = None
        self._listening: dict[tuple[str, str], IService] = {}
        self._closingTimers: list = []
        self._formerStreams: list[StreamProxyFactory] = []
        if accessLog is None and config.access_log is not None:
            accessLog = AccessLog(
                clock=reactor.seconds, target=config.access_log, format=config.log_format,
                buffer=config.access_log_buffer, flush=config.access_log_flush, reactor=reactor,
            )
        self.accessLog = accessLog
        self.connections = ConnectionLimit(config.gatekeeper.max_connections)
        self.pools = {
            name: buildPool(upstream, reactor) for name, upstream in config.upstreams.items()
        }
        self.shared = self.acme = None
        if config.state is not None or stateStore is not None:
            from manualb.state import sharedState

            self.shared = sharedState(config.state, config.instance, self.pools, reactor, stateStore)
        self.recent = self.admin = self.metrics = self._adminSite = None
        if config.acme is not None:
            from manualb.autotls import AutoTLS

            self.acme = AutoTLS(
                config.acme, reactor, self._certificatesChanged, lambda: self.tls, self.shared
            )
        if config.admin is not None:
            self._startAdmin(config.explain_records)
        if self.shared is None:
            self.waf, self.rateLimiter = gatekeeperEngines(config, reactor)
        else:
            self.waf, self.rateLimiter = gatekeeperEngines(config, reactor, self.shared.rates)
        self._sites = Sites(
            config,
            self.pools,
            reactor,
            self.connections,
            (self.waf, self.rateLimiter),
            None if self.acme is None else self.acme.stage,
            accessLog,
            self.recent,
            self.metrics,
        )
        self.site, self.sites, self.redirects = (
            self._sites.site,
            self._sites.sites,
            self._sites.redirects,
        )
        self.resource = self.site.resource
        self.streams: dict[str, StreamProxyFactory] = {}
        self._reloadStreams(config)

    def _startAdmin(self, records: int) -> None:
        """
        Make the admin API, the site of its listener, and what it shows:
        the decision records of the last C{records} requests and the
        metrics.
        """
        from manualb.admin import AdminResource, RecentRequests, adminSite
        from manualb.metrics import Metrics, MetricsResource

        self.recent = RecentRequests(records)
        self.metrics = Metrics(lambda: self.pools, lambda: self.connections.open)
        self.admin = AdminResource(
            self.pools, self.recent, self.reactor, metrics=MetricsResource(self.metrics.registry)
        )
        self.admin.reload = self.reloadFile
        self.admin.shared = self.metrics.shared = self.shared
        self.admin.acme = self.acme
        self._adminSite = adminSite(self.admin, self.reactor)

    def load(self) -> None:
        """
        Read what the configuration names on disk: the certificates of
        C{[tls]}, once, the admin API's token, and the access log, opened
        for appending.  L{start}
        does this; a listening service does it first (see L{makeService}),
        so that a missing file stops start-up before any port is bound.

        @raise ConfigError: A certificate or key cannot be used (a
            L{manualb.termination.TLSFileError}), or the access log cannot
            be opened.
        """
        config = self.config
        if self.tls is None and config.tls is not None:
            self.tls = self._certificates(config)
        if self.admin is not None and config.admin_token_file is not None:
            from manualb.admin import readToken

            self.admin.token = readToken(config.source, config.admin_token_file)
        if self.accessLog is not None:
            try:
                self.accessLog.start()
            except OSError as e:
                raise ConfigError(
                    config.source,
                    "manualb",
                    "access_log",
                    "cannot open %s: %s" % (config.access_log, e.strerror or e),
                )

    def _certificates(self, config: Config) -> SNIContextFactory:
        """
        The certificates of C{config}'s C{[tls]}, and those of C{[acme]}.
        """
        extra = None if self.acme is None else self.acme.contextsOf(config.acme)
        return contextFactoryFor(config.tls, config.source, extra=extra)

    def _certificatesChanged(self) -> None:
        if self.tls is not None:
            self.tls.update(self._certificates(self.config))

    def endpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The server endpoint for a C{listen} line: Twisted's own, or manualb's
        C{sni:} with the certificates of C{[tls]} (read now if not yet); with
        a backlog of L{DEFAULT_BACKLOG} unless the line gives one (see
        L{withBacklog}).
        """
        if isSNI(description):
            if self.tls is None and self.config.tls is not None:
                self.tls = self._certificates(self.config)
            endpoint = sniEndpoint(self.reactor, withBacklog(description), self.tls)
            endpoint.tlsFactory = ServerTLSFactory
            return endpoint
        return serverEndpoint(self.reactor, description, self.config.tls)

    def streamEndpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The server endpoint for a C{listen} line of a C{[stream]} section.
        """
        return serverEndpoint(self.reactor, description, self.config.tls)

    def factoryFor(self, listener: ListenerConfig, description: str) -> Factory:
        """
        What serves connections on one endpoint of C{listener}: its proxy,
        or, on a plain endpoint of a listener with C{redirect_https}, its
        site that redirects to the https URL (L{redirects}).
        """
        frontEnd = listener.front_end or self.config.front_end
        if listener.redirect_https is not None and not isTLS(description):
            return serving(self.redirects[listener.name], frontEnd)
        return serving(self.sites[listener.name], frontEnd)

    def listen(self, listener: ListenerConfig, description: str) -> IService:
        """
        The listening service of the line C{description} of C{listener},
        which a reload keeps for as long as the line stays.
        """
        return self._listen(("listener " + listener.name, description))

    def listeningServices(self) -> list[IService]:
        """
        A listening service for each line of the configuration: each
        endpoint of each listener and stream, and the admin listener; a
        reload keeps each for as long as its line stays.
        """
        return [self._listen(line) for line in ownedLines(self.config)]

    def _listen(self, line: tuple[str, str], ready: bool = True) -> IService:
        """
        The listening service of C{line}, an owner and its line (see
        L{_lines}); C{ready} when what it serves (L{_served}) is there.
        """
        owner, description = line
        if owner == "admin":
            makeEndpoint = partial(serverEndpoint, self.reactor, description)
        elif owner.startswith("stream "):
            makeEndpoint = partial(self.streamEndpoint, description)
        else:
            makeEndpoint = partial(self.endpoint, description)
        service = listening(
            makeEndpoint,
            self._served(line) if ready else None,
            "admin " + description if owner == "admin" else description,
        )
        self._listening[line] = service
        return service

    def _served(self, line: tuple[str, str]) -> Factory:
        """
        What serves the connections of C{line} in the configuration now in
        place.
        """
        owner, description = line
        if owner == "admin":
            return self._adminSite
        kind, name = owner.split(" ", 1)
        if kind == "stream":
            return self.streams[name]
        [listener] = [each for each in self.config.listeners if each.name == name]
        return self.factoryFor(listener, description)

    def start(self) -> None:
        """
        Read the files (L{load}) and start what runs in the background: the
        active health probes.

        @raise ConfigError: See L{load}.
        """
        self.load()
        self._started = True
        for pool in self.pools.values():
            pool.monitor.start()
        if self.shared is not None:
            self.shared.start()
        if self.acme is not None:
            self.acme.start()

    def fromFile(self, config: Config) -> Config:
        """
        The configuration to serve for C{config}, as read from the file by
        L{reloadFile}: C{config} itself; a balancer that serves its file
        its own way (a worker's admin API on a private socket) changes it.
        """
        return config

    def reloadFile(self) -> tuple[bool, str]:
        """
        Read the configuration file again and apply it (L{reload}), as
        C{SIGHUP} and the admin API's C{POST /api/reload} do.  A file that
        cannot be read or is wrong changes nothing: one error line names
        the problem, and the old configuration keeps serving.

        @return: Whether it was applied, and the line logged.
        """
        try:
            config = loadConfig(self.config.source, requireListen=bool(self.config.listeners))
            message = self.reload(self.fromFile(config))
        except ConfigError as e:
            message = "Reload refused, the old configuration keeps serving: %s" % (e,)
            log.error("{line}", line=message)
            return False, message
        return True, message

    def reload(self, config: Config) -> str:
        """
        Serve C{config} from now on, without dropping anyone: new requests
        take the new routes, pools, weights, strategies, health checks and
        gatekeeper rules (keep-alive clients from their next request, since
        each site's resource gets its new URL map and stage chain in
        place); requests in flight finish where they are.  A server that
        stays in its pool (same address, and for C{https} the same TLS
        settings) is the same L{Server}: its health, slow start, admin
        state and connections carry over.  A server that goes is drained:
        its requests in flight finish, then its connections close.

        Every line manualb listens on (of the listeners, the C{[stream]}
        sections and the admin API) that is new is bound first; a line that
        stays is never rebound, but serves what the new configuration says
        from its next connection (a listener that changes between serving
        every route and some, or between redirecting to https and not, also
        lets its open connections go once their requests are done); then
        the lines that went stop accepting, and their connections close as
        in a graceful stop (L{stop}): once their requests are done, or after
        C{shutdown_timeout} (a removed stream's tunnels too).

        The access log moves to its new file and format (opened before the
        old one closes), the C{sni:} listeners serve the certificates of a
        changed C{[tls]} to new connections (read and checked first), and
        the admin API reads its token again and keeps as many decision
        records as C{explain_records} says; C{[acme]} takes its new names and
        settings.  Only C{state}, C{instance} (the shared state) and adding or
        removing C{[acme]} wait for a restart, which the log line says.

        Stages an embedder added to a site's chain (of classes the
        configuration does not build) keep their place in the new chain.

        @raise ConfigError: A new line cannot be bound, the new access log
            or the admin token cannot be read, or a certificate or key of
            C{[tls]} cannot be used; nothing changed.

        @return: The line logged: what changed.
        """
        old = self.config
        restart, config = restartNeeded(old, config), keptAsItWas(old, config)
        certificates = None
        if config.tls != old.tls and config.tls is not None:
            # Read and checked before anything changes.
            certificates = self._certificates(config)
            if self.tls is None:
                # For the first sni: lines, bound below.
                self.tls = certificates
        token = None
        if config.admin is not None and config.admin_token_file is not None:
            from manualb.admin import readToken

            token = readToken(config.source, config.admin_token_file)
        logChanged = _logSettings(old) != _logSettings(config)
        if logChanged:
            self._changeAccessLog(config, config.access_log, config.log_format)
        try:
            opened, closing = self._openLines(config)
        except ConfigError:
            if logChanged:
                self._changeAccessLog(old, old.access_log, old.log_format)
            raise
        changes = describeChanges(old, config)
        if self.acme is not None and config.acme != old.acme:
            self.acme.reconfigure(config.acme)
        if opened:
            changes.append("listening on " + ", ".join(opened))
        if certificates is not None:
            self.tls.update(certificates)
            changes.append("certificates: " + ", ".join(certificates.names))
        if logChanged:
            changes.append("access log: %s, %s" % (config.access_log or "off", config.log_format))
        pools: dict[str, Pool] = {}
        leaving: list[Server] = []
        for name, upstream in config.upstreams.items():
            pools[name] = buildPool(upstream, self.reactor, self.pools.get(name), leaving)
        for name, pool in self.pools.items():
            if name not in pools:
                leaving.extend(pool.servers)
        for pool in self.pools.values():
            self._departed(pool.monitor.stop())
        self.config = config
        self.pools.clear()
        self.pools.update(pools)
        if self.shared is not None:
            self.shared.poolsChanged()
        if self._started:
            for pool in pools.values():
                pool.monitor.start()
        self.connections.limit = config.gatekeeper.max_connections
        self._reloadStreams(config)
        self._reloadAdmin(old, config, token)
        self._sites.reload(config)
        for line, service in self._listening.items():
            if line not in closing:
                self._serveWith(service, self._served(line))
        for server in leaving:
            self._drainServer(server)
        if closing:
            changes.append("closing " + ", ".join(description for owner, description in closing))
        for line in closing:
            self._closeListener(self._listening.pop(line))
        if leaving:
            changes.append(
                "%d servers leaving (their requests in flight finish): %s"
                % (len(leaving), ", ".join(server.name for server in leaving))
            )
        message = "Reloaded %s: %s" % (config.source, "; ".join(changes) or "nothing changed")
        if restart:
            message += "; needs a restart to take effect, kept as it was: " + ", ".join(restart)
        log.info("{line}", line=message)
        return message

    def _reloadStreams(self, config: Config) -> None:
        """
        Give each C{[stream]} of C{config} its proxy: the one it had, with
        its new section and pool, or a new one; a stream that went lets its
        tunnels run until they end, or until C{shutdown_timeout}.
        """
        names = set()
        for stream in config.streams:
            names.add(stream.name)
            factory = self.streams.get(stream.name)
            if factory is None:
                from manualb.streams import StreamProxyFactory

                self.streams[stream.name] = StreamProxyFactory(
                    stream, self.pools[stream.upstream], self.reactor
                )
            else:
                factory.config = stream
                factory.pool = self.pools[stream.upstream]
        for name in [name for name in self.streams if name not in names]:
            factory = self.streams.pop(name)
            self._formerStreams.append(factory)
            self._closeLater(factory.closeAll)
            ended = factory.whenClosed()
            ended.addBoth(lambda result, factory=factory: self._formerStreams.remove(factory))
            self._departed(ended)

    def _reloadAdmin(self, old: Config, config: Config, token: str | None) -> None:
        """
        Start, change or end the admin API as C{config} says: its token,
        how many decision records it keeps, and whether there is one.
        """
        if config.admin is None:
            self.recent = self.admin = self.metrics = self._adminSite = None
        elif self.admin is None:
            self._startAdmin(config.explain_records)
        elif config.explain_records != old.explain_records:
            self.recent.resize(config.explain_records)
        if self.admin is not None:
            self.admin.token = token
        self._sites.useAdmin(self.recent, self.metrics)

    def _serveWith(self, service: IService, factory: Factory) -> None:
        """
        Serve the next connections of C{service} with C{factory}; when that
        is another kind of site, the connections it has close once their
        requests are done, so that their clients come back to the new one.
        """
        previous = service.serving
        if previous is factory:
            return
        service.serveWith(factory)
        port = getattr(service, "port", None)
        if previous is None or port is None:
            return
        for connection in self.connections.connections:
            if servedBy(port, connection):
                connection.drain()

    def _changeAccessLog(self, config: Config, target: str | None, format: str) -> None:
        """
        Write the access log to C{target} in C{format} from now on, the new
        file opened (when the balancer has started) before the old one is
        closed; every site's resource writes to it, or to none when
        C{target} is L{None}.

        @raise ConfigError: The new file cannot be opened; nothing changed.
        """
        accessLog = self.accessLog
        try:
            if target is None:
                accessLog = None
            elif accessLog is None:
                accessLog = AccessLog(
                    clock=self.reactor.seconds, target=target, format=format,
                    buffer=config.access_log_buffer, flush=config.access_log_flush,
                    reactor=self.reactor,
                )
                if self._started:
                    accessLog.start()
            else:
                accessLog.change(target, format, config.access_log_buffer, config.access_log_flush)
        except OSError as e:
            raise ConfigError(
                config.source,
                "manualb",
                "access_log",
                "cannot open %s: %s" % (target, e.strerror or e),
            )
        if accessLog is not self.accessLog:
            if self.accessLog is not None:
                self.accessLog.close()
            self.accessLog = accessLog
            self._sites.useAccessLog(accessLog)

    def _openLines(self, config: Config) -> tuple[list[str], list[tuple[str, str]]]:
        """
        Bind the lines of C{config} that are not bound yet (see L{_lines}),
        with no factory yet: the reload gives each its own before the
        reactor runs again.  A line that moves to another owner (a listen
        line from one listener to another, on a fixed port) is not bound
        again, but changes owner.

        @raise ConfigError: A line cannot be bound: the lines bound so far
            are closed again.

        @return: The lines bound, and the (owner, line) of those to close.
        """
        wanted = ownedLines(config)
        closing = [line for line in self._listening if line not in wanted]
        if self.parent is None:
            return [], closing
        bound: list[tuple[tuple[str, str], IService]] = []
        moved: list[tuple[tuple[str, str], tuple[str, str]]] = []
        for line in wanted:
            if line in self._listening:
                continue
            moving = [each for each in closing if each[1] == line[1] and not anyPort(line[1])]
            if moving:
                closing.remove(moving[0])
                self._listening[line] = self._listening.pop(moving[0])
                moved.append((moving[0], line))
                continue
            service = self._listen(line, ready=False)
            del self._listening[line]
            try:
                service.setServiceParent(self.parent)
            except Exception as e:
                if service in self.parent:
                    service.disownServiceParent()
                for each, made in bound:
                    made.disownServiceParent()
                    del self._listening[each]
                for before, after in moved:
                    self._listening[before] = self._listening.pop(after)
                owner = line[0]
                raise ConfigError(
                    config.source,
                    "manualb" if owner in ("listener default", "admin") else owner,
                    "admin" if owner == "admin" else "listen",
                    "cannot listen on %s: %s" % (line[1], e),
                )
            self._listening[line] = service
            bound.append((line, service))
        return [line[1] for line, service in bound], closing

    def _closeListener(self, service: IService) -> None:
        """
        Stop accepting on a listening service that a reload removed, and
        let its connections go as in a graceful stop: each closes once its
        requests are done, and what is left after C{shutdown_timeout} is
        closed then.
        """
        port = getattr(service, "port", None)
        if service.parent is not None:
            stopped = service.disownServiceParent()
            if stopped is not None:
                self._departed(stopped)
        if port is None:
            return
        served = [each for each in self.connections.connections if servedBy(port, each)]
        for connection in served:
            connection.drain()
        if not served:
            return

        def timedOut():
            for connection in served:
                if connection in self.connections.connections:
                    connection.abortConnection()

        self._closeLater(timedOut)

    def _closeLater(self, close) -> None:
        """
        Call C{close} after C{shutdown_timeout}, unless L{close} comes
        first.
        """

        def timedOut():
            self._closingTimers.remove(timer)
            close()

        timer = self.reactor.callLater(self.config.shutdown_timeout, timedOut)
        self._closingTimers.append(timer)

    def _departed(self, ended: Deferred) -> None:
        """
        Keep C{ended}, which fires once something a reload let go of is
        gone, until it fires: L{close} waits for it.
        """
        if ended.called:
            return
        self._departures.append(ended)

        def gone(result):
            if ended in self._departures:
                self._departures.remove(ended)
            return result

        ended.addBoth(gone)

    def _drainServer(self, server: Server) -> None:
        """
        Let a server removed by a reload go: no new request reaches it (no
        pool of the new configuration has it); its connections close once
        their exchanges are done.
        """
        self._leaving.append(server)
        drained = server.connections.drain()

        def gone(result):
            if server in self._leaving:
                self._leaving.remove(server)
            log.info("Reload: server {server} drained", server=server.name)
            return result

        drained.addBoth(gone)
        self._departed(drained)

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """
        Stop gracefully, as nginx does on C{SIGQUIT}: idle client
        connections close at once, busy ones right after the response in
        hand (HTTP/2 ones after a GOAWAY, once their open streams are done);
        WebSocket and stream tunnels stay until either side closes them.
        Whatever is still open after C{timeout} seconds is closed then, as
        L{close} does.  The caller stops accepting connections first (the
        service of L{makeService} closes its listening ports before it
        stops the balancer).

        @param timeout: How long to wait, by default the configuration's
            C{shutdown_timeout}.

        @return: Fires once every connection is closed and every probe has
            ended (see L{close}).
        """
        if self._hasClosed:
            return succeed(None)
        if self._closeWaiters is not None:
            return self.close()
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        if self._stopTimer is None:
            self._drain(self.config.shutdown_timeout if timeout is None else timeout)
        return waiter

    def _drain(self, timeout: float) -> None:
        started = self.reactor.seconds()
        requests = self.connections.drain()
        streams = [*self.streams.values(), *self._formerStreams]
        tunnels = sum(stream.connections for stream in streams)
        log.info(
            "Stopping: waiting up to {timeout}s (shutdown_timeout) for {requests} "
            "requests in flight on {connections} client connections, and "
            "{tunnels} stream connections",
            timeout=timeout,
            requests=requests,
            connections=self.connections.open,
            tunnels=tunnels,
        )
        self._stopTimer = self.reactor.callLater(timeout, self._stopTimedOut, timeout)

        def drained(ignored):
            if self._stopTimer is None or self._closeWaiters is not None:
                # Timed out, or closed meanwhile.
                return
            self._stopTimer.cancel()
            log.info(
                "Stopped: the {requests} requests in flight and {tunnels} stream "
                "connections ended within {seconds:.3f}s",
                requests=requests,
                tunnels=tunnels,
                seconds=self.reactor.seconds() - started,
            )
            self.close()

        d = gatherResults(
            [self.connections.whenClosed()] + [stream.whenClosed() for stream in streams],
            consumeErrors=True,
        )
        d.addCallback(drained)

    def _stopTimedOut(self, timeout: float) -> None:
        self._stopTimer = None
        if self._closeWaiters is not None:
            return
        log.warn(
            "Stopping: shutdown_timeout ({timeout}s) passed; aborting the {count} "
            "connections still open",
            timeout=timeout,
            count=self.connections.open
            + sum(stream.connections for stream in self.streams.values()),
        )
        self.close()

    def close(self) -> Deferred[None]:
        """
        Stop the probes and close every connection: the clients' (HTTP and
        TCP streams), the probes' and the backends', and cancel the connects
        in flight.  Nothing waits for requests in flight to finish.  Closing
        again waits for the same end.

        @return: Fires once every connection is closed and every probe has
            ended; the access log is closed then.
        """
        if self._hasClosed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._closeWaiters is not None:
            self._closeWaiters.append(waiter)
            return waiter
        self._closeWaiters = [waiter]
        self._close().addBoth(self._closed)
        return waiter

    def _closed(self, outcome: object) -> None:
        self._hasClosed = True
        waiters, self._closeWaiters = self._closeWaiters, []
        waiters += self._stopWaiters
        self._stopWaiters = []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(None)

    def _close(self) -> Deferred:
        if self._stopTimer is not None and self._stopTimer.active():
            self._stopTimer.cancel()
        for timer in self._closingTimers:
            timer.cancel()
        self._closingTimers = []
        probes = [pool.monitor.stop() for pool in self.pools.values()]
        probes += list(self._departures)
        if self.shared is not None:
            probes.append(self.shared.stop())
        if self.acme is not None:
            probes.append(self.acme.stop())
        # The clients go first: an exchange whose client is gone lets go of
        # its backend connection rather than trying another server.
        clients = probes + [self.connections.closeAll()]
        clients += [stream.closeAll() for stream in (*self.streams.values(), *self._formerStreams)]

        def closeBackends(ignored):
            return gatherResults(
                [
                    server.connections.closeAll()
                    for pool in self.pools.values()
                    for server in pool.servers
                ]
                + [server.connections.closeAll() for server in list(self._leaving)],
                consumeErrors=True,
            )

        def closeLog(ignored):
            if self.accessLog is not None:
                self.accessLog.close()

        d = gatherResults(clients, consumeErrors=True)
        d.addCallback(closeBackends)
        d.addCallback(closeLog)
        return d


def _logSettings(config: Config) -> tuple:
    return config.access_log, config.log_format, config.access_log_buffer, config.access_log_flush


class _Lifecycle(Service):
    """
    Reads the balancer's files and starts its probes with the application,
    and stops it gracefully (L{LoadBalancer.stop}) when the application
    stops.
    """

    def __init__(self, balancer: LoadBalancer):
        self.balancer = balancer

    def privilegedStartService(self):
        super().privilegedStartService()
        # Before the ports are bound (the listening services come after this
        # one), and with the privileges to read keys and open the log.
        self.balancer.load()

    def startService(self):
        super().startService()
        self.balancer.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.balancer.stop()


class BalancerService(MultiService):
    """
    The service of one L{LoadBalancer}: its lifecycle (files read and probes
    started at start, a graceful stop) and a listening service for each
    endpoint of each listener and stream.  Stopping it closes the listening
    ports first (the lifecycle is its first child, so the last one
    stopped), then waits for the balancer's graceful stop.

    @ivar balancer: The balancer it serves.
    """

    def __init__(self, balancer: LoadBalancer):
        super().__init__()
        self.balancer = balancer
        balancer.parent = self
        _Lifecycle(balancer).setServiceParent(self)


def makeService(
    config: Config, reactor: IReactorCore | None = None, balancer: LoadBalancer | None = None
) -> BalancerService:
    """
    A service that runs the load balancer of C{config}: a listening service
    for each endpoint of each listener and stream.  Building it reads no file
    and binds no port; starting it does (a missing certificate raises
    L{ConfigError} then).

    Add it to your own application (C{service.setServiceParent(parent)}) to
    embed manualb; C{service.balancer} is the L{LoadBalancer} it serves.
    Stopping it closes the listening ports, then stops the balancer
    gracefully (L{LoadBalancer.stop}): the requests in flight finish, within
    C{shutdown_timeout}; the L{Deferred} of C{stopService} fires once every
    connection is closed.

    @param reactor: The reactor to serve with; by default the global one.
    @param balancer: The balancer of C{config} to serve, by default a new
        L{LoadBalancer}.
    """
    if reactor is None:
        from twisted.internet import reactor
    if balancer is None:
        balancer = LoadBalancer(config, reactor)
    parent = BalancerService(balancer)
    for service in balancer.listeningServices():
        service.setServiceParent(parent)
    return parent

