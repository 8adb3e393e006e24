"""
One worker process of a supervisor (C{workers = N} in C{[manualb]}, see
L{manualb.supervisor}): the same L{LoadBalancer} as a single process, but
listening on the sockets the supervisor bound and passed down, and started
by C{python -m manualb worker}.

What it is told, by the supervisor that spawns it:
  - C{--config}: the configuration file, which it reads (and reads again on
    C{SIGHUP}) itself;
  - C{--sockets}: JSON, for each listen line, the descriptor of its socket
    and the socket's address family;
  - C{--admin}: the UNIX socket to serve its admin API on, privately, for
    the supervisor to ask (when the configuration has an admin listener);
  - C{--daemon}: twistd runs as a daemon (for C{access_log = -}).

It writes C{ready} on descriptor 3 once it serves, logs to its standard
error (which the supervisor copies into its own log), and stops gracefully
on C{SIGTERM} or once its standard input (a pipe from the supervisor)
closes, so that it does not outlive its supervisor.
"""

from __future__ import annotations

import gc
import json
import sys
from typing import Mapping

import attrs
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import FileLogObserver, eventAsText, globalLogBeginner
from zope.interface import implementer

from manualb.config import Config, ConfigError
from manualb.configfile import loadConfig
from manualb.listensockets import AdoptedEndpoint
from manualb.reactor import installDefault
from manualb.service import BalancerService, LoadBalancer, makeService
from manualb.supervisor import READY_FD
from manualb.tap import reloadOnSignal, reopenOnSignal, stopOnSignals
from manualb.termination import isSNI, isTLS
from manualb.web import sslContextFactory

class WorkerBalancer(LoadBalancer):
    """
    A L{LoadBalancer} whose listen lines are sockets it inherited: it binds
    none itself, so that a reload whose lines changed is refused here (the
    supervisor binds the new lines and replaces its workers instead).

    @ivar sockets: For each listen line, the descriptor and address family
        of its socket.
    @ivar adminPath: The UNIX socket of its private admin API, or L{None}.
    @ivar number: Its number among the supervisor's workers, or L{None}.
    """

    def __init__(
        self,
        config: Config,
        reactor,
        sockets: Mapping[str, tuple[int, int]],
        adminPath: str | None = None,
        number: int | None = None,
    ):
        super().__init__(config, reactor)
        self.sockets = dict(sockets)
        self.adminPath = adminPath
        self.number = number

    def fromFile(self, config: Config) -> Config:
        return workerConfig(config, self.adminPath, self.number)

    def _adopted(self, description: str, made: IStreamServerEndpoint | None):
        if description not in self.sockets:
            raise ValueError("workers listen only on the sockets their supervisor binds")
        fileno, family = self.sockets[description]
        contextFactory = None
        if isSNI(description):
            contextFactory = made.contextFactory  # type: ignore[union-attr]
        elif isTLS(description):
            contextFactory = sslContextFactory(made)
        adopted = AdoptedEndpoint(self.reactor, fileno, family, contextFactory)
        if isSNI(description):
            adopted.tlsFactory = made.tlsFactory  # type: ignore[union-attr]
        return adopted

    def endpoint(self, description: str) -> IStreamServerEndpoint:
        # Made as a single process makes it (reading the certificates and
        # keys of ssl: and sni:, binding nothing), for its TLS.
        made = super().endpoint(description) if isTLS(description) else None
        return self._adopted(description, made)

    def streamEndpoint(self, description: str) -> IStreamServerEndpoint:
        return self._adopted(description, None)


def workerConfig(config: Config, adminPath: str | None, number: int | None = None) -> Config:
    """
    C{config} as a worker serves it: its admin API, if any, on the private
    UNIX socket C{adminPath}, which needs no token; and, when the file
    names the instance, its own name in the shared state (C{NAME/wNUMBER}),
    so that the workers' views of the servers' health stay apart.
    """
    admin = None if adminPath is None else "unix:%s:mode=600" % (adminPath,)
    instance = config.instance
    if instance is not None and number is not None:
        instance = "%s/w%d" % (instance, number)
    return attrs.evolve(config, admin=admin, admin_token_file=None, instance=instance)


def workerService(
    config: Config,
    reactor,
    sockets: Mapping[str, tuple[int, int]],
    adminPath: str | None,
    number: int | None = None,
) -> BalancerService:
    """
    The service of a worker: L{makeService}'s, listening on C{sockets}.
    """
    config = workerConfig(config, adminPath, number)
    return makeService(config, reactor, WorkerBalancer(config, reactor, sockets, adminPath, number))


@implementer(IHalfCloseableProtocol)
class _Supervised(Protocol):
    """
    The pipes to the supervisor: says C{ready} on L{READY_FD}, and stops the
    worker once the supervisor's end of its standard input closes.
    """

    def __init__(self, stop) -> None:
        self.stop = stop

    def connectionMade(self) -> None:
        self.transport.write(b"ready\n")

    def readConnectionLost(self) -> None:
        self.stop()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.stop()


def parseSockets(text: str) -> dict[str, tuple[int, int]]:
    """
    The C{--sockets} argument: a JSON list of C{[line, descriptor,
    family]}.
    """
    return {line: (int(fileno), int(family)) for line, fileno, family in json.loads(text)}


def runWorker(
    configPath: str,
    sockets: Mapping[str, tuple[int, int]],
    adminPath: str | None,
    daemon: bool = False,
    reactor=None,
    number: int | None = None,
) -> int:
    """
    Run a worker until it is told to stop; see the module's description.

    @return: The exit status: 0 after a graceful stop, 1 when the
        configuration cannot be served.
    """
    if reactor is None:
        installDefault()
        from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    observer = FileLogObserver(
        sys.stderr,
        lambda event: (eventAsText(event, includeTimestamp=False, includeSystem=False) or "")
        + "\n",
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        config = loadConfig(configPath, requireListen=True)
        service = workerService(config, reactor, sockets, adminPath, number)
        balancer = service.balancer
        if balancer.accessLog is not None:
            balancer.accessLog.daemon = daemon
        service.privilegedStartService()
        service.startService()
    except (ConfigError, CannotListenError) as e:
        sys.stderr.write("manualb: %s\n" % (e,))
        sys.stderr.flush()
        return 1
    stopping = []

    def stop() -> None:
        if stopping:
            return
        stopping.append(True)
        d = service.stopService()
        d.addBoth(lambda ignored: reactor.stop())

    reloadOnSignal(reactor, balancer.reloadFile)
    if balancer.accessLog is not None:
        reopenOnSignal(reactor, balancer.accessLog.reopen)
    reactor.callWhenRunning(stopOnSignals, reactor, stop, balancer.close)
    reactor.callWhenRunning(StandardIO, _Supervised(stop), 0, READY_FD, reactor)
    gc.freeze()
    reactor.run()
    return 0
