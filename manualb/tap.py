"""
The C{twistd manualb} command: C{twistd -n manualb --config conf/lb.ini}.
"""

from __future__ import annotations

import gc
import sys

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.python import usage

from manualb.config import ConfigError
from manualb.configfile import loadConfig
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
    from twisted.internet import reactor

    try:
        service = _makeService(loadConfig(options["config"], requireListen=True), reactor)
        # Read the certificates and open the log now, while the message can
        # still reach the terminal (a daemon has none once it starts).
        service.balancer.load()
    except ConfigError as e:
        sys.stderr.write("manualb: %s\n" % (e,))
        raise SystemExit(1)
    return _ExitIfCannotListen(service)


class _ExitIfCannotListen(MultiService):
    """
    Wraps the balancer's service so that a port that cannot be bound (in
    use, or not allowed), or a file that cannot be read at start (a
    certificate, a key, the access log), ends twistd with one line, not a
    traceback.
    """

    def __init__(self, service: BalancerService):
        super().__init__()
        self.balancer = service.balancer
        service.setServiceParent(self)

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except (CannotListenError, ConfigError) as e:
            sys.stderr.write("manualb: %s\n" % (e,))
            raise SystemExit(1)

    def startService(self):
        super().startService()
        # What start-up made (modules, configuration, pools) lives as long
        # as the process: kept out of the collector's reach, it is not
        # walked again by every full collection, whose pauses would
        # otherwise stall every request in flight for tens of milliseconds.
        gc.freeze()
