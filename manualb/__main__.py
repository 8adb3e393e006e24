"""
C{python -m manualb check FILE}: validate a configuration, like C{nginx -t}.
C{python -m manualb demo}: the built-in demo, manualb in front of two
backends.
C{python -m manualb backend NAME}: a test backend answering with its name,
which also keeps shopping carts (C{--cart}).
C{python -m manualb worker ...}: one worker process, which a supervisor
(C{workers = N}) starts (see L{manualb.worker}).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from typing import Sequence, TextIO

from manualb.config import Config, ConfigError
from manualb.configfile import loadConfig, placeError

#: What check cannot know, said after every good result.
BIND_NOTE = (
    "manualb: check binds no address: one that is in use, not local or not "
    "allowed (a port below 1024 without privileges) stops only the start"
)


def check(path: str, out: TextIO, err: TextIO) -> int:
    """
    Validate the configuration file at C{path}: 0 when it is good, 1 with the
    error on C{err} when not.  Whatever would stop C{twistd manualb} is an
    error here too, except an address that cannot be bound, which only
    binding it tells (L{BIND_NOTE}): the file is read as the start reads it,
    the service built as the start builds it, and the files the start opens
    (certificates and keys, the access log) are checked the same way, without
    creating any.
    """
    try:
        config = loadConfig(path, requireListen=True)
        _checkStart(config)
    except ConfigError as e:
        err.write("manualb: %s\n" % (e,))
        err.write("manualb: configuration file %s test failed\n" % (path,))
        return 1
    endpoints = [
        description
        for owner in (*config.listeners, *config.streams)
        for description in owner.listen
    ]
    out.write(
        "manualb: configuration file %s is ok: %d HTTP endpoint(s), %d stream(s), "
        "%d upstream(s), %d route(s)\n"
        % (
            path,
            sum(len(listener.listen) for listener in config.listeners),
            len(config.streams),
            len(config.upstreams),
            len(config.routes),
        )
    )
    from manualb.endpoints import isSystemd

    adopted = [description for description in endpoints if isSystemd(description)]
    if adopted:
        out.write(
            "manualb: %s: taken from systemd at start (socket activation), "
            "so only the syntax was checked\n"
            % (", ".join(adopted),)
        )
    out.write(BIND_NOTE + "\n")
    return 0


def _checkStart(config: Config) -> None:
    """
    Do what the start does after reading the file, short of binding and of
    creating files: build the service, load the certificates and keys, and
    check that the access log can be opened for appending.

    @raise ConfigError: naming the line of the section and key at fault.
    """
    from twisted.internet import reactor

    from manualb.service import makeService
    from manualb.termination import TLSFileError, contextFactoryFor

    path = config.source
    makeService(config, reactor)
    try:
        if config.workers > 1:
            from manualb.listensockets import lineProblem, listenLines

            for line in listenLines(config):
                problem = lineProblem(line)
                if problem is not None:
                    raise ConfigError(path, "manualb", "workers", "%s (%s)" % (problem, line))
        if config.tls is not None:
            # As nginx -t does: the certificates and keys must load, too.
            try:
                contextFactoryFor(config.tls, path)
            except TLSFileError as e:
                raise ConfigError(path, "tls", "certificates", str(e)) from None
        problem = _accessLogProblem(config.access_log)
        if problem is not None:
            raise ConfigError(path, "manualb", "access_log", problem)
    except ConfigError as e:
        raise placeError(e, path) from None


def _accessLogProblem(target: str | None) -> str | None:
    """
    Why the start could not open the access log C{target} for appending (in
    the words the start uses), or L{None} if it can; a missing file is
    not created, its directory must let it be.
    """
    if target is None or target == "-":
        return None
    problem = None
    if os.path.lexists(target):
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
        except OSError as e:
            problem = e.errno
    else:
        directory = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(directory):
            problem = errno.ENOENT
        elif not os.access(directory, os.W_OK | os.X_OK):
            problem = errno.EACCES
    if problem is None:
        return None
    return "cannot open %s: %s" % (target, os.strerror(problem))


def reload(pidfile: str, err: TextIO) -> int:
    """
    Send C{SIGHUP} to the manualb whose pid C{pidfile} holds: it reads its
    configuration file again (see C{manualb.service.LoadBalancer.reload}).
    Its log says what changed, or why the file was refused.

    @return: The exit status: 0 once the signal is sent, 1 when the pid
        file cannot be read or the process cannot be signalled.
    """
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as e:
        err.write("manualb: cannot read the pid from %s: %s\n" % (pidfile, getattr(e, "strerror", None) or e))
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        err.write("manualb: cannot signal process %d: %s\n" % (pid, e.strerror or e))
        return 1
    return 0


def _cartOption(text: str) -> str:
    """
    The value of C{backend --cart}, checked.
    """
    from manualb.state import parseStateURL

    try:
        parseStateURL(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manualb")
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="validate a configuration file")
    checking.add_argument("file")
    reloading = commands.add_parser(
        "reload", help="make a running manualb read its file again (SIGHUP)"
    )
    reloading.add_argument(
        "--pidfile", required=True, help="the pid file of twistd (its --pidfile)"
    )
    demo = commands.add_parser("demo", help="run manualb in front of two demo backends")
    demo.add_argument("--port", type=int, default=8080, help="the port manualb listens on")
    backend = commands.add_parser(
        "backend", help="run a test backend that answers with its name"
    )
    backend.add_argument("name")
    backend.add_argument("--port", type=int, default=0, help="0 picks a free port")
    backend.add_argument(
        "--exit-on-eof", action="store_true", help="stop when standard input closes"
    )
    backend.add_argument(
        "--cart",
        default="memory",
        type=_cartOption,
        help="where it keeps the shopping carts of POST /cart/add?item=... and "
        "GET /cart: memory (its own, the default) or redis://HOST:PORT/DB (shared)",
    )
    worker = commands.add_parser("worker", help="one worker process (started by the supervisor)")
    worker.add_argument("--config", required=True)
    worker.add_argument("--sockets", required=True, help="JSON: [[line, fd, family], ...]")
    worker.add_argument("--admin", default=None, help="the UNIX socket of its admin API")
    worker.add_argument("--daemon", action="store_true")
    worker.add_argument("--number", type=int, default=None, help="its number among the workers")
    args = parser.parse_args(argv)
    if args.command == "worker":
        from manualb.worker import parseSockets, runWorker

        return runWorker(
            args.config, parseSockets(args.sockets), args.admin, args.daemon, number=args.number
        )
    if args.command == "check":
        return check(args.file, sys.stdout, sys.stderr)
    if args.command == "reload":
        return reload(args.pidfile, sys.stderr)
    if args.command == "backend":
        from manualb.testing import runBackend

        runBackend(args.name, args.port, exitOnEOF=args.exit_on_eof, cart=args.cart)
        return 0
    from manualb.demo import runDemo

    return runDemo(args.port)


if __name__ == "__main__":
    sys.exit(main())
