"""A separate process of ours that takes vramctl's host lease:
`python lease_holder.py LEASE_FILE [--hold-s S] [--cycles N] [--log FILE]`.

It reserves 1 MiB through a real Coordinator with `lease_file` set (no servers, no probe: only the lease
matters), prints `held <pid>` once first granted, holds for `--hold-s` seconds (default: until killed), and
with `--cycles N` reserves again at once after each release, N times in all (a busy bot's changes one after
another); with `--log FILE` it appends `held <pid>` to FILE each time it holds the lease, while holding it,
so the lines of several holders are in the order they held it. Then it prints `released` and exits. A test reads
its stdout (and the log) to order events between processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from vramctl import Coordinator, VramSettings


async def main(lease_file: str, hold_s: float | None, cycles: int, log: Path | None) -> None:
    settings = VramSettings(consumers=[], probe="none", lease_file=lease_file, poll_s=0.02, timeout_s=60)
    async with Coordinator(settings) as coord:
        for cycle in range(cycles):
            async with coord.reserve_mib(1, note="lease_holder"):
                if log is not None:
                    with log.open("a") as f:
                        f.write(f"held {os.getpid()}\n")
                if cycle == 0:
                    print(f"held {os.getpid()}", flush=True)
                if hold_s is None:
                    await asyncio.Event().wait()
                await asyncio.sleep(hold_s)
    print("released", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("lease_file")
    p.add_argument("--hold-s", type=float, default=None)
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--log", type=Path, default=None)
    a = p.parse_args()
    asyncio.run(main(a.lease_file, a.hold_s, a.cycles, a.log))
    sys.exit(0)
