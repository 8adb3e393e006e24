"""
C{python -m manualb check FILE}: validate a configuration, like C{nginx -t}.
C{python -m manualb demo}: the built-in demo, manualb in front of two
backends.
C{python -m manualb backend NAME}: a test backend answering with its name.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from manualb.config import ConfigError
from manualb.configfile import loadConfig


def check(path: str, out: TextIO, err: TextIO) -> int:
    """
    Validate the configuration file at C{path}: 0 when it is good, 1 with the
    error on C{err} when not.
    """
    try:
        config = loadConfig(path, requireListen=True)
        if config.tls is not None:
            from manualb.termination import contextFactoryFor

            # As nginx -t does: the certificates and keys must load, too.
            contextFactoryFor(config.tls, path)
    except ConfigError as e:
        err.write("manualb: %s\n" % (e,))
        err.write("manualb: configuration file %s test failed\n" % (path,))
        return 1
    endpoints = sum(len(listener.listen) for listener in config.listeners)
    out.write(
        "manualb: configuration file %s is ok: %d HTTP endpoint(s), %d stream(s), "
        "%d upstream(s), %d route(s)\n"
        % (path, endpoints, len(config.streams), len(config.upstreams), len(config.routes))
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manualb")
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="validate a configuration file")
    checking.add_argument("file")
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
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.file, sys.stdout, sys.stderr)
    if args.command == "backend":
        from manualb.testing import runBackend

        runBackend(args.name, args.port, exitOnEOF=args.exit_on_eof)
        return 0
    from manualb.demo import runDemo

    return runDemo(args.port)


if __name__ == "__main__":
    sys.exit(main())
