"""
The supervisor of C{workers = N}: one process that binds every listen line
once (before twistd's C{-u}/C{-g} drop its privileges, so ports below 1024
work) and runs N worker processes (L{manualb.worker}) that adopt the
sockets and serve them side by side, the kernel handing each new
connection to one of them.

It restarts a worker that dies, at once the first time and then with a
growing delay (L{Backoff}) while it keeps dying young, so that a crash loop
does not spin; it forwards the signals:

  - C{SIGHUP} (and C{POST /api/reload}): the file is read and checked here
    first.  When its listen lines are the same, each worker reloads it in
    place (keeping its connections); when they changed, the new lines are
    bound first and a new worker replaces each old one, nginx's way: the old
    one stops gracefully once its successor is ready.
  - C{SIGTERM}, C{SIGINT}: every worker stops gracefully; the supervisor
    exits (status 0) once all have, killing any still there
    C{shutdown_timeout} plus L{Supervisor.grace} seconds later.
  - C{SIGUSR1}: every worker reopens its access log.

With an admin listener, the supervisor owns it and each worker serves its
admin API on a private UNIX socket, which the supervisor asks and merges
(L{manualb.fleetadmin}).

A worker goes through the states of L{WorkerState}: C{starting} once
spawned, C{running} once it says it serves, C{stopping} once told to stop,
C{dead} once its process ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from enum import Enum
from functools import partial
from typing import Any, Callable

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

import manualb
from manualb.admin import adminSite, readToken
from manualb.config import Config, ConfigError
from manualb.configfile import loadConfig
from manualb.fleetadmin import FleetAdmin
from manualb.listensockets import ListenSockets, lineProblem, listenLines
from manualb.entry import serverEndpoint
from manualb.termination import contextFactoryFor
from manualb.web import listening

log = Logger()

#: The descriptor a worker writes C{ready} to.
READY_FD = 3
#: The first descriptor of the sockets passed to a worker.
FIRST_SOCKET_FD = 4


class WorkerState(Enum):
    """
    Where a worker is in its life.
    """

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DEAD = "dead"


@attrs.frozen
class Backoff:
    """
    How long the supervisor waits before it restarts a worker that died:
    at once after its first death, then C{initial} seconds, growing by
    C{factor} up to C{maximum} while it keeps dying within C{stableAfter}
    seconds of its start.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    stableAfter: float = 10.0

    def delay(self, failures: int) -> float:
        """
        The wait before a restart after C{failures} deaths in a row.
        """
        if failures <= 1:
            return 0.0
        return min(self.maximum, self.initial * self.factor ** (failures - 2))


@attrs.define(eq=False)
class Worker:
    """
    One worker process.

    @ivar number: Its place, from 1 to C{workers}: a restarted or replacing
        worker takes the number of the one it follows.
    @ivar generation: Which set of listen lines it serves; a reload that
        changes them starts the next generation.
    @ivar adminPath: The UNIX socket of its admin API, or L{None}.
    @ivar restarts: How many workers of its number died before it.
    @ivar process: Its L{IProcessTransport}, once spawned.
    @ivar reloadPending: A reload came while it was starting: it reloads
        once it runs.
    """

    number: int
    generation: int
    adminPath: str | None = None
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    process: Any = None
    reloadPending: bool = False
    exitStatus: str | None = None

    def signal(self, name: str) -> bool:
        """
        Send the signal C{name} (C{"TERM"}...) to the process, unless it has
        ended; return whether it was sent.
        """
        if self.process is None or self.state is WorkerState.DEAD:
            return False
        try:
            self.process.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            return False
        return True

    def summary(self) -> dict:
        """
        What the admin API shows of it.
        """
        return {
            "worker": self.number,
            "generation": self.generation,
            "pid": self.pid,
            "state": self.state.value,
            "started": self.started,
            "restarts": self.restarts,
        }


class WorkerProtocol(ProcessProtocol):
    """
    The supervisor's end of a worker's pipes: its log lines (standard
    error), its C{ready} (descriptor L{READY_FD}), its end.
    """

    def __init__(self, supervisor: "Supervisor", worker: Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD:
            if b"ready" in data:
                self.supervisor.workerReady(self.worker)
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self.supervisor.workerSaid(self.worker, line.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        if self._partial:
            self.supervisor.workerSaid(self.worker, self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self.supervisor.workerEnded(self.worker, reason.value)


@attrs.define
class WorkerLogs:
    """
    The access logs of the workers, as twistd's plugin sees a balancer's:
    whether they go to twistd's log (C{daemon}), and reopening them.
    """

    reopen: Callable[[], None]
    daemon: bool = False


def _describe(status: BaseException) -> str:
    if isinstance(status, ProcessDone):
        return "exited with status 0"
    code = getattr(status, "exitCode", None)
    number = getattr(status, "signal", None)
    if number is not None:
        try:
            return "killed by %s" % (signal.Signals(number).name,)
        except ValueError:
            return "killed by signal %d" % (number,)
    return "exited with status %s" % (code,)


class Supervisor:
    """
    Runs the workers of one configuration; see the module's description.

    @ivar config: The configuration in force.
    @ivar sockets: The sockets of its listen lines.
    @ivar workers: The workers of the latest generation, by number.
    @ivar retiring: Workers of earlier generations, serving until their
        successor is ready, or stopping.
    @ivar changes: The admin API's changes so far, C{(path, body)} in
        order, which every worker started later is given too.
    @ivar readyHooks: Called with each worker that becomes ready.
    @ivar grace: How long after C{shutdown_timeout} a stop kills the
        workers still there.
    """

    def __init__(
        self,
        config: Config,
        reactor,
        executable: str = sys.executable,
        backoff: Backoff = Backoff(),
        grace: float = 5.0,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.executable = executable
        self.backoff = backoff
        self.grace = grace
        self.sockets = ListenSockets()
        self.workers: dict[int, Worker] = {}
        self.retiring: list[Worker] = []
        self.changes: list[tuple[bytes, bytes]] = []
        self.readyHooks: list[Callable[[Worker], object]] = []
        self.accessLog = WorkerLogs(self.reopen)
        self.adminToken: bytes | None = None
        self.directory: str | None = None
        self.generation = 1
        self.stopping = False
        self._serial = 0
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._stopWaiters: list[Deferred[None]] = []
        self._killTimer: Any = None

    # Starting.

    def load(self) -> None:
        """
        Check what the workers will need, as a single process checks it
        before it binds: every listen line can be shared, the certificates
        load, and read the admin API's token.

        @raise ConfigError: Naming what is wrong.
        """
        config = self.config
        for line in listenLines(config):
            problem = lineProblem(line)
            if problem is not None:
                raise ConfigError(config.source, "manualb", "workers", "%s (%s)" % (problem, line))
        if config.tls is not None:
            contextFactoryFor(config.tls, config.source)
        if config.admin is not None and config.admin_token_file is not None:
            self.adminToken = readToken(config.source, config.admin_token_file)

    def bind(self) -> None:
        """
        Bind every listen line.

        @raise ConfigError: One cannot be bound.
        """
        lines = listenLines(self.config)
        self.sockets.bind(self.config.source, lines)
        for line in lines:
            log.info(
                "manualb supervisor: {line} listening at {address}",
                line=line,
                address=self.sockets.address(line),
            )

    def start(self) -> None:
        """
        Start the workers.
        """
        if self.config.admin is not None and self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="manualb-")
        for number in range(1, self.config.workers + 1):
            self._spawn(number)

    def _spawn(self, number: int, restarts: int = 0) -> Worker:
        self._serial += 1
        adminPath = None
        if self.directory is not None:
            adminPath = os.path.join(self.directory, "w%d-%d.sock" % (number, self._serial))
        worker = Worker(number, self.generation, adminPath, restarts=restarts)
        self.workers[number] = worker
        childFDs: dict[int, Any] = {0: "w", 1: 1, 2: "r", READY_FD: "r"}
        passed = []
        for index, line in enumerate(listenLines(self.config)):
            sock = self.sockets.sockets[line]
            fd = FIRST_SOCKET_FD + index
            childFDs[fd] = sock.fileno()
            passed.append([line, fd, int(sock.family)])
        argv = [
            self.executable, "-m", "manualb", "worker",
            "--config", self.config.source,
            "--sockets", json.dumps(passed),
            "--number", str(number),
        ]
        if adminPath is not None:
            argv += ["--admin", adminPath]
        if self.accessLog.daemon:
            argv.append("--daemon")
        env = dict(os.environ)
        # The worker imports this very manualb, wherever it comes from.
        home = os.path.dirname(os.path.dirname(os.path.abspath(manualb.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [home] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        worker.started = self.reactor.seconds()
        worker.process = self.reactor.spawnProcess(
            WorkerProtocol(self, worker), self.executable, argv, env=env, childFDs=childFDs
        )
        worker.pid = getattr(worker.process, "pid", None)
        log.info(
            "manualb supervisor: worker {number} started, pid {pid}", number=number, pid=worker.pid
        )
        return worker

    # What workers tell.

    def workerSaid(self, worker: Worker, line: str) -> None:
        """
        Copy a line of the worker's log into the supervisor's.
        """
        log.info("[worker {number} pid {pid}] {line}", number=worker.number, pid=worker.pid, line=line)

    def workerReady(self, worker: Worker) -> None:
        """
        The worker serves: the one of an earlier generation that it
        replaces stops now; a reload that came meanwhile reaches it.
        """
        if worker.state is not WorkerState.STARTING:
            return
        worker.state = WorkerState.RUNNING
        log.info(
            "manualb supervisor: worker {number} (pid {pid}) ready",
            number=worker.number,
            pid=worker.pid,
        )
        if worker.reloadPending:
            worker.reloadPending = False
            worker.signal("HUP")
        for old in list(self.retiring):
            if old.number == worker.number and old.state is not WorkerState.STOPPING:
                self._stopWorker(old)
        for hook in self.readyHooks:
            hook(worker)

    def workerEnded(self, worker: Worker, status: BaseException) -> None:
        """
        The worker's process ended: restart it, unless it was told to stop
        or another replaced it.
        """
        expected = worker.state is WorkerState.STOPPING
        worker.state = WorkerState.DEAD
        worker.exitStatus = _describe(status)
        if worker in self.retiring:
            self.retiring.remove(worker)
        current = self.workers.get(worker.number) is worker
        if self.stopping or expected or not current:
            log.info(
                "manualb supervisor: worker {number} (pid {pid}) {status}",
                number=worker.number,
                pid=worker.pid,
                status=worker.exitStatus,
            )
            if current and (self.stopping or expected):
                del self.workers[worker.number]
            self._checkStopped()
            return
        lived = self.reactor.seconds() - worker.started
        failures = 1 if lived >= self.backoff.stableAfter else self._failures.get(worker.number, 0) + 1
        self._failures[worker.number] = failures
        delay = self.backoff.delay(failures)
        log.warn(
            "manualb supervisor: worker {number} (pid {pid}) {status} after {lived:.1f}s; "
            "restarting it in {delay:g}s",
            number=worker.number,
            pid=worker.pid,
            status=worker.exitStatus,
            lived=lived,
            delay=delay,
        )
        self._restarts[worker.number] = self.reactor.callLater(
            delay, self._restart, worker.number, worker.restarts + 1
        )

    def _restart(self, number: int, restarts: int) -> None:
        del self._restarts[number]
        if not self.stopping:
            self._spawn(number, restarts)

    # Signals.

    def live(self) -> list[Worker]:
        """
        Every worker whose process has not ended, the latest generation's
        first.
        """
        workers = list(self.workers.values()) + self.retiring
        return [worker for worker in workers if worker.state is not WorkerState.DEAD]

    def reopen(self) -> None:
        """
        Make every worker reopen its access log (C{SIGUSR1}).
        """
        for worker in self.live():
            worker.signal("USR1")

    def reloadFile(self) -> tuple[bool, str]:
        """
        Read the configuration file again and have the workers apply it;
        see the module's description.  A file that cannot be read or is
        wrong, or a new listen line that cannot be bound, changes nothing:
        one error line names the problem.

        @return: Whether it was applied, and the line logged.
        """
        old = self.config
        try:
            config = loadConfig(old.source, requireListen=True)
            if config.tls is not None:
                contextFactoryFor(config.tls, config.source)
            lines = listenLines(config)
            for line in lines:
                problem = lineProblem(line)
                if problem is not None:
                    raise ConfigError(config.source, "manualb", "listen", "%s (%s)" % (problem, line))
            changed = lines != listenLines(old)
            if changed:
                self.sockets.bind(config.source, lines)
        except ConfigError as e:
            message = "Reload refused, the old configuration keeps serving: %s" % (e,)
            log.error("{line}", line=message)
            return False, message
        self.config = attrs.evolve(
            config, admin=old.admin, admin_token_file=old.admin_token_file
        )
        if changed:
            message = self._replaceWorkers(lines)
        else:
            message = self._reloadWorkers()
        message = "Reloaded %s: %s" % (config.source, message)
        log.info("{line}", line=message)
        return True, message

    def _reloadWorkers(self) -> str:
        count = self.config.workers
        reloaded = 0
        for worker in list(self.workers.values()):
            if worker.number > count:
                del self.workers[worker.number]
                self.retiring.append(worker)
                self._stopWorker(worker)
            elif worker.state is WorkerState.RUNNING:
                worker.signal("HUP")
                reloaded += 1
            elif worker.state is WorkerState.STARTING:
                worker.reloadPending = True
                reloaded += 1
        started = [
            self._spawn(number)
            for number in range(1, count + 1)
            if number not in self.workers and number not in self._restarts
        ]
        message = "each of the %d workers reloads in place" % (reloaded,)
        if started:
            message += "; %d workers started" % (len(started),)
        return message

    def _replaceWorkers(self, lines: tuple[str, ...]) -> str:
        self.generation += 1
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        old = list(self.workers.values())
        self.workers = {}
        self.retiring.extend(old)
        for number in range(1, self.config.workers + 1):
            self._spawn(number)
        for worker in old:
            # No successor, or one not yet started: stop now.
            if worker.number > self.config.workers or worker.state is WorkerState.STARTING:
                self._stopWorker(worker)
        closed = self.sockets.release(lines)
        for line in lines:
            log.info(
                "manualb supervisor: {line} listening at {address}",
                line=line,
                address=self.sockets.address(line),
            )
        message = "listen lines changed: %d new workers replace the old ones" % (
            self.config.workers,
        )
        if closed:
            message += "; closing " + ", ".join(closed)
        return message

    def _stopWorker(self, worker: Worker) -> None:
        if worker.state is WorkerState.DEAD:
            return
        worker.state = WorkerState.STOPPING
        worker.signal("TERM")

    # Stopping.

    def stop(self) -> Deferred[None]:
        """
        Stop every worker gracefully: each stops accepting, lets its
        requests in flight finish within C{shutdown_timeout}, and exits;
        any still there L{grace} seconds later is killed.

        @return: Fires once every worker has ended.
        """
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        if not self.stopping:
            self.stopping = True
            for timer in self._restarts.values():
                timer.cancel()
            self._restarts.clear()
            for worker in self.live():
                self._stopWorker(worker)
            # The workers hold their own copies while they drain; once they
            # close theirs, new connections are refused.
            self.sockets.release(())
            self._killTimer = self.reactor.callLater(
                self.config.shutdown_timeout + self.grace, self._kill
            )
        self._checkStopped()
        return waiter

    def close(self) -> None:
        """
        Hurry a stop: each worker closes its connections at once (its
        second C{SIGTERM}).
        """
        if not self.stopping:
            self.stop()
        for worker in self.live():
            worker.signal("TERM")

    def _kill(self) -> None:
        self._killTimer = None
        for worker in self.live():
            log.warn(
                "manualb supervisor: worker {number} (pid {pid}) still running after "
                "shutdown_timeout; killing it",
                number=worker.number,
                pid=worker.pid,
            )
            worker.signal("KILL")

    def _checkStopped(self) -> None:
        if not self.stopping or self.live():
            return
        if self._killTimer is not None:
            self._killTimer.cancel()
            self._killTimer = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        waiters, self._stopWaiters = self._stopWaiters, []
        for waiter in waiters:
            waiter.callback(None)


class SupervisorService(MultiService):
    """
    The service of a L{Supervisor}: binds the listen lines (and the admin
    listener) while privileged, starts the workers, stops them gracefully.

    @ivar balancer: The supervisor, under the name twistd's plugin gives
        what it runs (it reloads, stops, closes and reopens logs as a
        balancer does).
    """

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self.supervisor = self.balancer = supervisor
        self.admin = None
        config = supervisor.config
        if config.admin is not None:
            reactor = supervisor.reactor
            resource = FleetAdmin(supervisor, reactor)
            self.admin = listening(
                partial(serverEndpoint, reactor, config.admin),
                adminSite(resource, reactor),
                "admin " + config.admin,
            )
            self.admin.setServiceParent(self)

    def privilegedStartService(self) -> None:
        self.supervisor.bind()
        super().privilegedStartService()
        port = getattr(self.admin, "port", None)
        if port is not None:
            host = port.getHost()
            log.info(
                "manualb supervisor: admin API listening at {address}",
                address="%s:%s" % (getattr(host, "host", host), getattr(host, "port", "")),
            )

    def startService(self) -> None:
        super().startService()
        self.supervisor.start()

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        return gatherResults([stopped or succeed(None), self.supervisor.stop()]).addCallback(
            lambda ignored: None
        )


def supervisorService(config: Config, reactor) -> SupervisorService:
    """
    The service that runs C{config} in C{config.workers} processes.
    """
    return SupervisorService(Supervisor(config, reactor))
