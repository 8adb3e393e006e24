"""
Runs C{twistd} (manualb under test) while watching for what stalls its
reactor: the lateness of a 10 ms timer (the reactor was busy, or the process
was not scheduled) and the garbage collector's pauses.

Usage, as C{bench/tail} starts manualb::

    python bench/stallwatch.py REPORT -n --pidfile= manualb --config lb.ini

Twice a second, and at exit, C{REPORT} is rewritten (atomically) with a JSON
object: the events worth a look, each C{[monotonic time, milliseconds]} --
C{lags} (the timer ran 20 ms or more late) and C{gc} (a collection took 5 ms
or more, with its generation) -- and totals.  Times are
C{time.monotonic()}, which the bench compares with its own.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

#: How often the timer runs, and how late it must be to be reported.
TICK = 0.01
LAG_REPORTED = 0.02
#: How long a collection must take to be reported.
GC_REPORTED = 0.005
#: The most events of each kind kept (the latest).
KEPT = 10000


class Watch:
    """
    The figures kept, and their writing to C{path}.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lags: list[list[float]] = []
        self.gc: list[list[float]] = []
        self.ticks = 0
        self.gcCount = 0
        self.gcTotal = 0.0
        self._gcStart = 0.0
        self._expected = 0.0

    def collecting(self, phase: str, info: dict) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gcStart = now
            return
        took = now - self._gcStart
        self.gcCount += 1
        self.gcTotal += took
        if took >= GC_REPORTED:
            self.gc.append([now, took * 1000, info.get("generation", -1)])
            del self.gc[:-KEPT]

    def tick(self) -> None:
        now = time.monotonic()
        if self._expected:
            late = now - self._expected
            if late >= LAG_REPORTED:
                self.lags.append([now, late * 1000])
                del self.lags[:-KEPT]
        self.ticks += 1
        self._expected = now + TICK

    def write(self) -> None:
        figures = {
            "lags": self.lags,
            "gc": self.gc,
            "ticks": self.ticks,
            "gc_count": self.gcCount,
            "gc_total_ms": self.gcTotal * 1000,
            "written": time.monotonic(),
        }
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(figures, f)
        os.replace(temporary, self.path)


def main(argv: list[str]) -> None:
    """
    Watch, then hand over to twistd with the rest of C{argv}.
    """
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall
    from twisted.scripts.twistd import run

    watch = Watch(argv[0])
    gc.callbacks.append(watch.collecting)
    reactor.callWhenRunning(LoopingCall(watch.tick).start, TICK)
    reactor.callWhenRunning(LoopingCall(watch.write).start, 0.5)
    reactor.addSystemEventTrigger("after", "shutdown", watch.write)
    sys.argv = ["twistd", *argv[1:]]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
