"""Keep a service running: ``python -m stack.watchdog -- <command ...>``.

The local stack's stand-in for compose's ``restart: unless-stopped``: when the
service dies (a crash, the OOM killer, ``kill -9``), it is started again after
a short backoff. A service that keeps dying young (``GIVE_UP_AFTER`` quick
failures in a row) is left dead and the watchdog exits with its status, so
``make up`` reports a broken service instead of waiting on it.

Stopping is by process group (``runtime.processes.stop_process_group``): the
watchdog and its service get SIGTERM together, and the watchdog, told to stop,
does not restart anything.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

QUICK_FAILURE_SECONDS = 10.0
GIVE_UP_AFTER = 5
MAX_BACKOFF_SECONDS = 10.0


def log(message: str) -> None:
    print(f"watchdog: {message}", file=sys.stderr, flush=True)


def run(command: list[str], first_backoff: float = 0.5, give_up_after: int = GIVE_UP_AFTER) -> int:
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    quick_failures = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        # The group's SIGTERM reaches us and the child together; give ours a moment to land.
        backoff = min(MAX_BACKOFF_SECONDS, first_backoff * 2**quick_failures)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if stopping:
            return code
        lived = time.monotonic() - started
        quick_failures = quick_failures + 1 if lived < QUICK_FAILURE_SECONDS else 0
        if quick_failures >= give_up_after:
            log(f"{command[0]} failed {quick_failures} times within {QUICK_FAILURE_SECONDS:.0f}s of starting; "
                f"giving up (last status {code})")
            return code if code else 1
        log(f"{' '.join(command[:4])} exited with status {code} after {lived:.1f}s; restarted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.watchdog", description=__doc__.splitlines()[0])
    parser.add_argument("--first-backoff", type=float, default=0.5, help="seconds before the first restart")
    parser.add_argument("--give-up-after", type=int, default=GIVE_UP_AFTER,
                        help="quick failures in a row after which the service is left dead")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the service's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: python -m stack.watchdog -- <command ...>")
    return run(command, args.first_backoff, args.give_up_after)


if __name__ == "__main__":
    sys.exit(main())
