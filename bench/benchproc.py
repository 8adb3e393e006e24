"""
What the benchmarks share to run servers: the tools they need, pinning to
CPUs, starting and stopping processes, and a clean exit on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NGINX = "/usr/sbin/nginx"
START_TIMEOUT = 10.0
#: The CPUs this process could run on when it started (before any pinning
#: of its own).
ALLOWED_CPUS = frozenset(os.sched_getaffinity(0))


class BenchError(Exception):
    """
    The benchmark cannot go on; the message says why.
    """


# -- tools ------------------------------------------------------------------


#: The tools every bench needs, by name and the path looked for.
TOOLS = {"wrk": "wrk", "nginx": NGINX, "curl": "curl", "taskset": "taskset"}
#: The Debian packages that bring them.
PACKAGES = ["wrk", "nginx-light", "curl", "util-linux"]


def missingTools(tools: dict[str, str]) -> list[str]:
    """
    Names of the tools of C{tools} (name to path) that are not installed.
    """
    return [name for name, path in tools.items() if shutil.which(path) is None]


def ensureTools(
    tools: dict[str, str] = TOOLS,
    packages: list[str] = PACKAGES,
    optional: dict[str, str] | None = None,
) -> list[str]:
    """
    Install C{packages} with apt-get if any of C{tools} or C{optional} (name
    to path) is missing; return the names of the C{optional} tools still
    missing.  A missing C{tools} entry is an error.
    """
    optional = optional or {}
    missing = missingTools({**tools, **optional})
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        required = missingTools(tools)
        if required:
            raise BenchError(
                f"missing tools: {', '.join(required)}; install them "
                f"(apt-get install {' '.join(packages)}) or run as root"
            )
        return missingTools(optional)
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=300)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], check=False, timeout=600, env=env
    )
    if done.returncode != 0:
        # One package that cannot be had must not keep the others out.
        for package in packages:
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", package], check=False, timeout=600, env=env
            )
    still = missingTools(tools)
    if still:
        raise BenchError(f"still missing after apt-get: {', '.join(still)}")
    return missingTools(optional)


def pinning() -> tuple[list[str], list[str], str]:
    """
    Return the command prefixes that pin the proxy under test and the rest
    (backends, load generator, curl) to different CPUs, and a note.

    With fewer than two usable CPUs nothing is pinned.
    """
    cpus = sorted(ALLOWED_CPUS)
    if len(cpus) < 2:
        return [], [], f"only {len(cpus)} CPU available: no taskset pinning"
    proxyCpu, otherCpu = cpus[0], cpus[1]
    return (
        ["taskset", "-c", str(proxyCpu)],
        ["taskset", "-c", str(otherCpu)],
        f"proxy on CPU {proxyCpu}; backends, wrk and curl on CPU {otherCpu}",
    )


def everyCpu() -> list[str]:
    """
    The command prefix that lets a process run on every CPU, whatever the
    affinity of the process starting it.
    """
    cpus = sorted(ALLOWED_CPUS)
    return ["taskset", "-c", ",".join(map(str, cpus))]


# -- ports and processes ----------------------------------------------------


def waitForPort(port: int, process: subprocess.Popen, name: str) -> None:
    """
    Return once 127.0.0.1:C{port} accepts connections; fail if C{process}
    exits first or L{START_TIMEOUT} seconds pass.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on port {port} within {START_TIMEOUT}s")


class Processes:
    """
    The servers the benchmark starts; L{stopAll} stops every one of them.

    Each runs in its own session (process group), with its output in a log
    file in the work directory, so that it, and any children it forks
    (nginx workers), can be stopped by its own id.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen, Path]] = []

    def start(
        self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """
        Start C{argv} (with C{env} added to the environment) and wait until
        it listens on C{port}.
        """
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **env} if env else None,
                start_new_session=True,
            )
        self.running.append((name, process, log))
        try:
            waitForPort(port, process, name)
        except BenchError as e:
            raise BenchError(f"{e}\n--- {log}:\n{tail(log)}") from None
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """
        Stop one process (and its process group): SIGTERM, then SIGKILL
        after 5 seconds.
        """
        for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # nginx workers, or anything else left in the group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.running = [r for r in self.running if r[1] is not process]

    def stopAll(self) -> None:
        """
        Stop every process still running, newest first; a second Ctrl-C
        does not cut this short.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, process, _ in reversed(list(self.running)):
            self.stop(process)

    def log(self, process: subprocess.Popen) -> str:
        """
        The tail of C{process}'s output.
        """
        for _, p, log in self.running:
            if p is process:
                return tail(log)
        return ""


def tail(path: Path, lines: int = 20) -> str:
    """
    The last C{lines} lines of a text file, or "" if it cannot be read.
    """
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def writeFile(path: Path, text: str) -> Path:
    """
    Write C{text} to C{path} and return C{path}.
    """
    path.write_text(text)
    return path


def interrupt(signum, frame) -> None:
    """
    Signal handler: turn SIGTERM into L{KeyboardInterrupt}.
    """
    raise KeyboardInterrupt


def runBench(name: str, bench, args, tools: Callable[[], object] = ensureTools) -> dict | int:
    """
    Run C{bench(args, workdir)} in a fresh temporary work directory, with
    the tools installed first (by C{tools()}); return its results, or the exit status when
    it could not run.  Ctrl-C and SIGTERM stop it cleanly (servers killed,
    files removed), even when started with SIGINT ignored (as a background
    job).
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        tools()
    except (BenchError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix=f"manualb-{name}-"))
    try:
        return bench(args, workdir)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
