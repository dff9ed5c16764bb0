"""Send the sample app a steady trickle of tasks, so that the dashboards have something to show.

Usage: ``python -m sampleapp.producer [--rate 2] [--count N]``; stops on SIGTERM or after
``--count`` tasks.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from . import build_report, charge_card, resize_image, sync_inventory

#: What is sent: (weight, task, argument made from the task's sequence number).
MIX: list[tuple[int, Any, Callable[[int], object]]] = [
    (45, resize_image, lambda n: 100 + n % 900),
    (25, charge_card, lambda n: n % 500),
    (15, sync_inventory, lambda n: f"sku-{n % 50}"),
    (15, build_report, lambda n: n % 30),
]


def send(count: int | None, rate: float, stop: threading.Event) -> int:
    """Send about ``rate`` tasks a second until ``stop`` is set or ``count`` are sent."""
    weights = [weight for weight, _, _ in MIX]
    sent = 0
    while (count is None or sent < count) and not stop.is_set():
        _, task, make_arg = random.choices(MIX, weights)[0]
        task.apply_async((make_arg(sent),))
        sent += 1
        stop.wait(random.expovariate(rate))
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and send tasks until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m sampleapp.producer", description=__doc__)
    parser.add_argument("--rate", type=float, default=2.0, help="tasks a second (default 2)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many tasks")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sent = send(args.count, args.rate, stop)
    print(f"producer: sent {sent} tasks", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
