"""
The streaming part of C{bench/run}: a large body through a fresh manualb,
downloaded and uploaded, while its resident memory is sampled.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from benchlib import freePort
from benchproc import BenchError
from loads import checkResponse
from servers import startManualb, startScript

MiB = 1024 * 1024


def rssKiB(pid: int) -> int | None:
    """
    VmRSS of process C{pid} in KiB, or L{None} once it is gone.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RSSSampler(threading.Thread):
    """
    Samples a process's VmRSS every C{interval} seconds until stopped,
    keeping the peak.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = rssKiB(pid) or 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            rss = rssKiB(self.pid)
            if rss is None:
                return
            self.samples += 1
            self.peak = max(self.peak, rss)

    def stop(self) -> None:
        """
        Stop sampling and wait for the thread.
        """
        self._halt.set()
        self.join(timeout=5)


def runCurl(prefix: list[str], argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """
    Run curl (pinned with C{prefix}) with a bounded run time.
    """
    return subprocess.run(
        prefix + ["curl", "-sS", "--max-time", str(int(timeout)), *argv],
        capture_output=True, text=True, timeout=timeout + 30, check=False,
    )


def streamThrough(pid: int, prefix: list[str], argv: list[str], timeout: float) -> dict:
    """
    Run one curl transfer while sampling the RSS of manualb (C{pid}).

    C{argv} must make curl print C{"BYTES SECONDS"} last on standard output.
    """
    before = rssKiB(pid)
    sampler = RSSSampler(pid)
    sampler.start()
    try:
        done = runCurl(prefix, argv, timeout)
    finally:
        sampler.stop()
    after = rssKiB(pid)
    if done.returncode != 0:
        raise BenchError(f"curl {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    size, seconds = lines[-1].split()
    return {
        "bytes": int(size),
        "seconds": float(seconds),
        "body": "\n".join(lines[:-1]).strip(),
        "rss_before_mib": (before or 0) / 1024,
        "rss_peak_mib": max(sampler.peak, after or 0) / 1024,
        "rss_after_mib": (after or 0) / 1024,
        "rss_samples": sampler.samples,
        "alive": after is not None,
    }


def summarise(result: dict, expected: int, received: int) -> dict:
    """
    Add throughput, growth and the completeness check to a transfer result.
    """
    result["expected_bytes"] = expected
    result["received_bytes"] = received
    result["complete"] = received == expected
    result["mib_per_s"] = expected / MiB / result["seconds"] if result["seconds"] else 0.0
    result["rss_growth_mib"] = result["rss_peak_mib"] - result["rss_before_mib"]
    return result


def warmPageCache(path: Path, limit: float = 60.0) -> None:
    """
    Read C{path} once, so that no transfer pays for the kernel's first read
    of the sparse file (which alone runs at a few hundred MiB/s here).
    """
    deadline = time.monotonic() + limit
    with open(path, "rb", buffering=0) as f:
        while f.read(4 * MiB) and time.monotonic() < deadline:
            pass


def directMiBs(prefix: list[str], argv: list[str], timeout: float) -> float:
    """
    MiB/s of one curl transfer straight to a backend, for reference.

    C{argv} must make curl print C{"BYTES SECONDS"} last on standard output.
    """
    done = runCurl(prefix, argv, timeout)
    if done.returncode != 0:
        raise BenchError(f"curl {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    size, seconds = done.stdout.strip().splitlines()[-1].split()
    return int(size) / MiB / float(seconds) if float(seconds) else 0.0


def downloadArgv(port: int) -> list[str]:
    """
    curl arguments that fetch C{/big} from C{port} and print its size and
    time.
    """
    return ["-o", "/dev/null", "-w", "%{size_download} %{time_total}\n",
            f"http://127.0.0.1:{port}/big"]


def uploadArgv(port: int, bigfile: Path) -> list[str]:
    """
    curl arguments that PUT C{bigfile} to C{port} and print the answer, then
    the size and time.
    """
    return ["-T", str(bigfile), "-w", "\n%{size_upload} %{time_total}\n",
            f"http://127.0.0.1:{port}/upload"]


def streamDownload(procs, proxyPin, otherPin, backendPorts, size, timeout) -> dict:
    """
    Download the large file from the nginx backends through a fresh manualb
    (and once directly from a backend, for reference).
    """
    direct = directMiBs(otherPin, downloadArgv(backendPorts[0]), timeout)
    process, port = startManualb(procs, proxyPin, "manualb-download", list(backendPorts))
    try:
        checkResponse(port)
        result = streamThrough(process.pid, otherPin, downloadArgv(port), timeout)
        if process.poll() is not None:
            raise BenchError(f"manualb died during the download:\n{procs.log(process)}")
        result["direct_mib_per_s"] = direct
        return summarise(result, size, result["bytes"])
    finally:
        procs.stop(process)


def streamUpload(procs, proxyPin, otherPin, bigfile, size, timeout) -> dict:
    """
    PUT the large file through a fresh manualb to the counting sink backend
    (and once directly to the sink, for reference).
    """
    sinkPort = freePort()
    sink = startScript(procs, otherPin, "sink", "sink_backend.py", [str(sinkPort)], sinkPort)
    process = None
    try:
        direct = directMiBs(otherPin, uploadArgv(sinkPort, bigfile), timeout)
        process, port = startManualb(procs, proxyPin, "manualb-upload", [sinkPort])
        checkResponse(port)
        result = streamThrough(process.pid, otherPin, uploadArgv(port, bigfile), timeout)
        result["direct_mib_per_s"] = direct
        if process.poll() is not None:
            raise BenchError(f"manualb died during the upload:\n{procs.log(process)}")
        try:
            received = int(result["body"])
        except ValueError:
            raise BenchError(f"sink answered {result['body']!r}, not a byte count") from None
        return summarise(result, size, received)
    finally:
        if process is not None:
            procs.stop(process)
        procs.stop(sink)


def runStreaming(procs, proxyPin, otherPin, backendPorts, bigfile, size, args) -> dict:
    """
    Stream the large file through manualb, down and up.
    """
    streaming: dict = {}
    warmPageCache(bigfile)
    for key, run in (
        ("download", lambda: streamDownload(procs, proxyPin, otherPin, backendPorts, size, args.stream_timeout)),
        ("upload", lambda: streamUpload(procs, proxyPin, otherPin, bigfile, size, args.stream_timeout)),
    ):
        print(f"  streaming {size / MiB:g} MiB through manualb: {key} ...", flush=True)
        try:
            streaming[key] = run()
        except (BenchError, subprocess.TimeoutExpired) as e:
            print(f"  {key}: FAILED: {e}", flush=True)
            streaming[key] = {"error": str(e)}
    return streaming


def formatStream(label: str, r: dict) -> str:
    """
    One line about a streaming transfer.
    """
    if "error" in r:
        return f"{label} failed: {r['error']}"
    check = "complete" if r["complete"] else (
        f"INCOMPLETE: {r['received_bytes']} of {r['expected_bytes']} bytes")
    return (
        f"{label} {r['mib_per_s']:.0f} MiB/s ({r['seconds']:.1f} s, {check}), "
        f"RSS {r['rss_before_mib']:.0f} -> {r['rss_peak_mib']:.0f} MiB "
        f"(+{r['rss_growth_mib']:.1f} MiB, peak of {r['rss_samples']} samples); "
        f"direct without proxy {r['direct_mib_per_s']:.0f} MiB/s"
    )
