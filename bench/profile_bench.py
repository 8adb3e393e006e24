"""
Record where manualb spends its time under load: a flame graph of one
manualb process (py-spy, sampling) while wrk loads it, in the set-up of
C{bench/run} (two nginx backends on CPU 1, manualb pinned to CPU 0).

Writes C{bench/results/profile.svg} (the flame graph) and
C{bench/results/profile.txt} (the folded stacks), and prints the functions
that hold the most samples of their own, and wrk's figures for the run.
py-spy is installed into the virtualenv from PyPI when it is missing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchproc import BENCH, BenchError, Processes, pinning, runBench
from loads import checkResponse, runWrk
from servers import backendDirectory, makeCertificate, startBackends, startManualb

RESULTS = BENCH / "results"


def pySpy() -> str:
    """
    The path of py-spy beside this python, installed first when missing.
    """
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True
        )
    return str(spy)


def topFunctions(folded: Path, count: int = 15) -> list[tuple[str, float]]:
    """
    The C{count} functions with the most samples of their own in the folded
    stacks C{folded}, with their share of all samples.
    """
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        total += int(samples)
        # "name (file:line)": the function, whatever line was running.
        own[re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])] += int(samples)
    return [(name, n / total) for name, n in own.most_common(count)] if total else []


def profile(args: argparse.Namespace, workdir: Path) -> dict:
    """
    Start the backends and manualb, load manualb with wrk for
    C{args.duration} seconds while py-spy samples it, and return what was
    measured.
    """
    spy = pySpy()
    proxyPin, otherPin, note = pinning()
    print(note, flush=True)
    procs = Processes(workdir)
    directory = backendDirectory(workdir)
    try:
        backendPorts = startBackends(procs, otherPin, directory)
        process, port = startManualb(
            procs, proxyPin, "manualb", list(backendPorts), frontEnd=args.front_end,
            admin=args.admin, everyday=args.everyday,
            gatekeeper="waf = block\n" if args.everyday else "", tls=makeCertificate(workdir) if args.tls else None,
        )
        checkResponse(port, args.tls)
        print(f"warm-up {args.warmup}s, then {args.duration}s under wrk -c{args.connections} "
              f"with py-spy at {args.rate} Hz ...", flush=True)
        if args.warmup:
            runWrk(otherPin, port, args.warmup, args.connections, tls=args.tls)
        RESULTS.mkdir(exist_ok=True)
        svg, folded = RESULTS / "profile.svg", RESULTS / "profile.txt"
        # py-spy samples on the other CPU, so that manualb keeps its own.
        record = [
            spy, "record", "--pid", str(process.pid), "--rate", str(args.rate),
            "--duration", str(args.duration), "--nonblocking",
        ]
        spies = [
            subprocess.Popen(otherPin + record + ["--format", fmt, "--output", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for fmt, path in (("flamegraph", svg), ("raw", folded))
        ]
        load, _ = runWrk(otherPin, port, args.duration, args.connections, tls=args.tls)
        for spy_ in spies:
            _, err = spy_.communicate(timeout=args.duration + 60)
            if spy_.returncode != 0:
                raise BenchError(f"py-spy failed ({spy_.returncode}): {err.decode().strip()}")
    finally:
        procs.stopAll()
    return {"load": load, "svg": svg, "top": topFunctions(folded)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("-d", "--duration", type=int, default=10, help="seconds sampled (10)")
    p.add_argument("-c", "--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--warmup", type=int, default=2, help="wrk warm-up seconds (2)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples a second (200)")
    p.add_argument("--front-end", choices=("lean", "twisted"), default="lean")
    p.add_argument("--admin", action="store_true", help="with the admin listener on")
    p.add_argument("--everyday", action="store_true",
                   help="as bench/run's 'manualb everyday': the access log, health "
                        "checks, the admin listener and the WAF on")
    p.add_argument("--tls", action="store_true", help="over HTTPS (HTTP/1.1 over TLS)")
    args = p.parse_args(argv)
    results = runBench("profile", profile, args)
    if isinstance(results, int):
        return results
    load = results["load"]
    print(f"\nwrk: {load.get('rps', 0):.0f} req/s, p50 {load.get('p50_ms', 0):.2f} ms, "
          f"p99 {load.get('p99_ms', 0):.2f} ms (under sampling)")
    print("functions with the most samples of their own:")
    for name, share in results["top"]:
        print(f"  {share:6.1%}  {name}")
    print(f"\nflame graph: {results['svg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
