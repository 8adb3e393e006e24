"""
The C{twistd manualb} command: C{twistd -n manualb --config conf/lb.ini}.

C{SIGTERM} and C{SIGINT} stop gracefully, with exit status 0, as
C{nginx -s quit} does; C{SIGUSR1} reopens the access log, after twistd's own
handler (which rotates twistd's log file) has run; C{SIGHUP} reloads the
configuration file (L{manualb.service.LoadBalancer.reloadFile}).
"""

from __future__ import annotations

import gc
import signal
import sys
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.python import usage

from manualb.config import ConfigError
from manualb.configfile import loadConfig
from manualb.reactor import installDefault
from manualb.service import BalancerService, makeService as _makeService


class Options(usage.Options):
    """
    Options of C{twistd manualb}.
    """

    synopsis = "[--config FILE]"
    longdesc = "Run the manualb load balancer configured by an INI file."
    optParameters = [
        ["config", "c", "conf/lb.ini", "The configuration file."],
    ]


def makeService(options: Options):
    """
    Load the configuration and build the service; a broken file ends the
    program with one line naming file, section and key.
    """
    installDefault()
    from twisted.internet import reactor

    try:
        config = loadConfig(options["config"], requireListen=True)
        if config.workers > 1:
            from manualb.supervisor import supervisorService

            service = supervisorService(config, reactor)
        else:
            service = _makeService(config, reactor)
        if service.balancer.accessLog is not None:
            service.balancer.accessLog.daemon = isDaemon(options)
        # Read the certificates and open the log now, while the message can
        # still reach the terminal (a daemon has none once it starts).
        service.balancer.load()
    except ConfigError as e:
        sys.stderr.write("manualb: %s\n" % (e,))
        raise SystemExit(1)
    return _ExitIfCannotListen(service, reactor)


def isDaemon(options: usage.Options) -> bool:
    """
    Whether twistd, whose subcommand C{options} are, runs as a daemon
    (without C{-n}); not when there is no twistd (C{options} of their own).
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return False
    try:
        return not parent["nodaemon"]
    except KeyError:
        return False


def reopenOnSignal(
    reactor: Any, reopen: Callable[[], None], signals: Any = signal
) -> Callable[[], None]:
    """
    Make C{SIGUSR1} call C{reopen} in the reactor's thread, after whatever
    handler it had before (twistd's, which rotates its own log file).  The
    handler itself only schedules the call (L{IReactorThreads.callFromThread}
    is safe in a signal handler).

    @param signals: The L{signal} module, or one like it.
    @return: Puts the previous handler back.
    """
    previous = signals.getsignal(signals.SIGUSR1)

    def handler(number, frame):
        if callable(previous):
            previous(number, frame)
        reactor.callFromThread(reopen)

    signals.signal(signals.SIGUSR1, handler)

    def restore() -> None:
        if signals.getsignal(signals.SIGUSR1) is handler:
            signals.signal(signals.SIGUSR1, previous)

    return restore


def reloadOnSignal(
    reactor: Any, reload: Callable[[], object], signals: Any = signal
) -> None:
    """
    Make C{SIGHUP} call C{reload} in the reactor's thread, as nginx reloads
    on it; by default the signal ends the process.  The handler itself only
    schedules the call (which runs once the reactor does).

    @param signals: The L{signal} module, or one like it.
    """
    number = getattr(signals, "SIGHUP", None)
    if number is None:
        return

    def handler(number, frame):
        reactor.callFromThread(reload)

    signals.signal(number, handler)


def stopOnSignals(
    reactor: Any,
    stop: Callable[[], None],
    hurry: Callable[[], None],
    signals: Any = signal,
) -> None:
    """
    Make C{SIGTERM} and C{SIGINT} stop manualb as nginx's C{quit} does: the
    first calls C{stop} (the graceful stop, ending in exit status 0); a
    second, while it waits, calls C{hurry} (closing everything at once).
    The reactor's own handlers would end the process with the signal's
    status instead.  The handler itself only schedules the calls.

    @param signals: The L{signal} module, or one like it.
    """
    received: list[int] = []

    def handler(number, frame):
        received.append(number)
        reactor.callFromThread(stop if len(received) == 1 else hurry)

    for name in ("SIGTERM", "SIGINT"):
        number = getattr(signals, name, None)
        if number is not None:
            signals.signal(number, handler)


class _ExitIfCannotListen(MultiService):
    """
    Wraps the balancer's service so that a port that cannot be bound (in
    use, or not allowed), or a file that cannot be read at start (a
    certificate, a key, the access log), ends twistd with one line, not a
    traceback.
    """

    def __init__(self, service: BalancerService, reactor: Any = None):
        super().__init__()
        self.balancer = service.balancer
        self.reactor = reactor
        self._restoreSignal: Callable[[], None] | None = None
        service.setServiceParent(self)

    def privilegedStartService(self):
        reloadFile = getattr(self.balancer, "reloadFile", None)
        if self.reactor is not None and reloadFile is not None:
            # Before the ports are bound: a SIGHUP sent once the port is
            # seen open must reload, not end the process (its default, which
            # neither twistd nor the reactor changes).
            reloadOnSignal(self.reactor, reloadFile)
        try:
            super().privilegedStartService()
        except (CannotListenError, ConfigError) as e:
            sys.stderr.write("manualb: %s\n" % (e,))
            raise SystemExit(1)

    def startService(self):
        super().startService()
        accessLog = getattr(self.balancer, "accessLog", None)
        if accessLog is not None and self.reactor is not None and hasattr(signal, "SIGUSR1"):
            # Now, after twistd installed its own handler (when it logs to
            # a file), so that both run.
            self._restoreSignal = reopenOnSignal(self.reactor, accessLog.reopen)
        if self.reactor is not None:
            # Once running: the reactor installs its own handlers as it
            # starts, which would replace these.
            self.reactor.callWhenRunning(
                stopOnSignals, self.reactor, self.reactor.stop, self.balancer.close
            )
        # What start-up made (modules, configuration, pools) lives as long
        # as the process: kept out of the collector's reach, it is not
        # walked again by every full collection, whose pauses would
        # otherwise stall every request in flight for tens of milliseconds.
        gc.freeze()

    def stopService(self):
        if self._restoreSignal is not None:
            self._restoreSignal()
            self._restoreSignal = None
        return super().stopService()
