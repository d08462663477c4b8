#!/usr/bin/env python3
"""Closed-loop capacity of two cpu-profile repositories, side by side, in alternating rounds.

    .venv/bin/python scripts/compare_capacity.py BASELINE_REPOSITORY CHANGED_REPOSITORY \
        [--callers 4,16] [--rounds 4] [--seconds 8]

For a change to the python steps (what ``reranker_steps`` does per request): both repositories
are served at once by two local Tritons, and each round runs N closed-loop callers for a few
seconds against one, then the other (the order alternating between rounds), so that drift in the
machine's load hits both. Requests: the overload benchmark's workload (50 candidates of six
test-corpus sentences). Prints requests per second per round and the median ratio, changed over
baseline. Developer tooling (needs the dev environment); results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from reranker_bench.machine import machine_info
from reranker_bench.overload import build_requests
from reranker_client import AsyncRerankerClient, RetryPolicy
from reranker_common import int_list, progress_printer
from reranker_serve import TritonServer


async def _capacity(url: str, callers: int, seconds: float, requests: list[tuple[str, tuple[str, ...]]]) -> float:
    """Successful requests per second of ``callers`` closed-loop callers over ``seconds``."""
    async with AsyncRerankerClient(url, timeout=120, retries=RetryPolicy.disabled()) as client:
        await client.score(*requests[0])  # warm
        done = 0
        started = time.perf_counter()

        async def caller(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() - started < seconds:
                await client.score(*requests[index % len(requests)])
                done += 1
                index += callers

        await asyncio.gather(*(caller(i) for i in range(callers)))
        return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="repository before the change")
    parser.add_argument("changed", type=Path, help="repository with the change")
    parser.add_argument("--callers", type=int_list, default=(4, 16), help="closed-loop callers per level")
    parser.add_argument("--rounds", type=int, default=4, help="alternations per level")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measurement")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or not args.callers or min(args.callers) < 1:
        parser.error("--rounds, --seconds and every --callers level must be positive")
    say = progress_printer()
    logs = Path(tempfile.mkdtemp(prefix="compare-capacity-"))
    requests = [(query, tuple(documents)) for query, documents in build_requests(50, 6)]
    machine = machine_info()
    say(f"hardware: {machine['cpu']}, {machine['cores']} cores")
    servers = {}
    try:
        for name, repository in (("baseline", args.baseline), ("changed", args.changed)):
            servers[name] = TritonServer(repository, log_file=logs / f"{name}.log").start()
            say(f"{name}: {repository} at {servers[name].grpc_url}")
        for callers in args.callers:
            rates: dict[str, list[float]] = {"baseline": [], "changed": []}
            for round_number in range(args.rounds):
                order = ["baseline", "changed"] if round_number % 2 == 0 else ["changed", "baseline"]
                for name in order:
                    rates[name].append(asyncio.run(_capacity(servers[name].grpc_url, callers, args.seconds, requests)))
                say(
                    f"{callers} callers, round {round_number + 1}: "
                    + ", ".join(f"{n} {rates[n][-1]:.1f} req/s" for n in order)
                )
            ratios = [c / b for b, c in zip(rates["baseline"], rates["changed"], strict=True)]
            per_round = ", ".join(f"{r:.3f}" for r in ratios)
            print(
                f"{callers} callers: baseline median {statistics.median(rates['baseline']):.1f} req/s, "
                f"changed median {statistics.median(rates['changed']):.1f} req/s, "
                f"changed/baseline per round {per_round} (median {statistics.median(ratios):.3f})",
                flush=True,
            )
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
