"""A separate process of ours that takes vramctl's host lease: `python lease_holder.py LEASE_FILE [--hold-s S]`.

It reserves 1 MiB through a real Coordinator with `lease_file` set (no servers, no probe: only the lease
matters), prints `held <pid>` once granted, holds for `--hold-s` seconds (default: until killed), prints
`released` and exits. A test reads its stdout to order events between processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from vramctl import Coordinator, VramSettings


async def main(lease_file: str, hold_s: float | None) -> None:
    settings = VramSettings(consumers=[], probe="none", lease_file=lease_file, poll_s=0.02, timeout_s=60)
    async with Coordinator(settings) as coord:
        async with coord.reserve_mib(1, note="lease_holder"):
            print(f"held {os.getpid()}", flush=True)
            if hold_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(hold_s)
    print("released", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("lease_file")
    p.add_argument("--hold-s", type=float, default=None)
    a = p.parse_args()
    asyncio.run(main(a.lease_file, a.hold_s))
    sys.exit(0)
