"""DataLoader worker processes that leave the pre-emption signals to the main process.

SLURM's ``scancel`` and pre-emption, ``timeout`` and a terminal's Ctrl-C signal the whole process group, so the
loader workers get the signal too. torch's workers die of SIGTERM (torch installs a handler that re-raises it) and
stop on SIGINT (KeyboardInterrupt), and the main process then fails with ``DataLoader worker (pid ...) is killed
by signal`` at an arbitrary point of a step, before ``PreemptionCheckpoint`` can save. The main process handles
these signals; the workers must survive them:

* :func:`ignore_main_process_signals`, the ``worker_init_fn``, ignores :data:`MAIN_PROCESS_SIGNALS` in each
  worker, except a SIGTERM from the main process itself: ``Process.terminate()`` (torch's worker shutdown,
  multiprocessing's at exit) still ends the worker quietly, as torch's own worker handler does, so the main
  process neither hangs at exit nor reports the workers it ended. A worker whose main process is gone stops by
  itself (torch's watchdog).
* :func:`worker_context` blocks those signals in the main process while it forks a worker. A forked child keeps
  the blocked mask and none of the pending signals, so a signal that arrives between the fork and
  ``worker_init_fn`` waits in the main process (and is handled there once the fork returns) instead of killing
  the new worker. With the ``spawn`` and ``forkserver`` start methods only ``worker_init_fn`` protects workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext, ForkContext, ForkProcess

__all__ = ["MAIN_PROCESS_SIGNALS", "ignore_main_process_signals", "signals_blocked", "worker_context"]

#: The signals a dimlab run handles in its main process (pre-emption, time limits, Ctrl-C); workers ignore them.
MAIN_PROCESS_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2})


@contextmanager
def signals_blocked(signals=MAIN_PROCESS_SIGNALS) -> Iterator[None]:
    """Hold ``signals`` pending in the calling thread inside the block; they are delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_main_process_signals(worker_id: int) -> None:
    """``worker_init_fn``: ignore :data:`MAIN_PROCESS_SIGNALS` in this worker (the main process handles them),
    but exit on a SIGTERM that the main process sent (its ``terminate()``)."""
    others = MAIN_PROCESS_SIGNALS - {signal.SIGTERM}
    for sig in others:
        signal.signal(sig, signal.SIG_IGN)
    # A Python handler cannot see who sent a signal; a thread waiting for the (blocked) SIGTERM can.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_exit_on_sigterm_from, args=(os.getppid(),), name="dimlab-worker-sigterm", daemon=True
    ).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, others)  # blocked since the fork, see worker_context


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)  # what torch's worker handler does on the main process's terminate()


class _SignalSafeForkProcess(ForkProcess):
    def start(self) -> None:
        with signals_blocked():
            super().start()


class _SignalSafeForkContext(ForkContext):
    Process = _SignalSafeForkProcess


def worker_context() -> BaseContext | None:
    """The ``multiprocessing_context`` for loader workers: fork with :data:`MAIN_PROCESS_SIGNALS` blocked while
    forking when fork is the default start method (Linux up to Python 3.13), else None (torch's default)."""
    if multiprocessing.get_start_method() != "fork":
        return None
    return _SignalSafeForkContext()
