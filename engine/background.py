"""Run a command at the lowest CPU priority as seen from every session:
``python -m engine.background CMD…``.

With the kernel's autogroups (``/proc/sys/kernel/sched_autogroup_enabled``, on by default on desktop
Linux) the CPU is first shared between sessions and ``nice`` only ranks the processes within one.
A ``nice -n 19`` training started from one terminal still took half of the two cores from the app
or the tests started from another: a training step of the shipped student took 5.8 s beside two
such runs against 1.0 s with them paused (README, the ``cpu-long`` protocol). So the command gets a
session of its own, that session's autogroup is set to nice 19 (where the kernel has autogroups),
and the process to nice 19 as well. This process stays in the caller's session and passes SIGINT,
SIGTERM and SIGHUP on, so Ctrl-C or a kill of the caller still stops the command; it exits with
the command's status.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

NICE = 19
AUTOGROUP = "/proc/self/autogroup"


def lower_priority() -> None:
    """Put this process in a session of its own whose autogroup, and itself, are at nice 19."""
    os.setsid()
    try:
        with open(AUTOGROUP, "w") as fh:
            fh.write(str(NICE))
    except FileNotFoundError:  # no autogroups here: plain nice is what ranks processes
        pass
    except OSError as exc:
        print(f"engine.background: the session's autogroup stays as it was ({exc.strerror or exc}); "
              f"other sessions may still share the CPU with it evenly", file=sys.stderr)
    os.nice(NICE - os.nice(0))


def main(argv: Sequence[str] | None = None) -> int:
    cmd = list(sys.argv[1:] if argv is None else argv)
    if not cmd:
        print("usage: python -m engine.background COMMAND [ARG…]", file=sys.stderr)
        return 2
    pid = os.fork()
    if pid == 0:  # the command
        try:
            lower_priority()
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            print(f"{cmd[0]}: {exc.strerror or exc}", file=sys.stderr)
        os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            signal.signal(sig, forward)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main())
