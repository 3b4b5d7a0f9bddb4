"""Stopping cleanly on Ctrl-C (SIGINT) or `kill` (SIGTERM, what schedulers send first): the main process acts,
worker processes ignore both (leave_signals_to_parent) and are ended by the main process.

Training:
The first signal only sets a flag: the loop finishes the step it is in, writes a checkpoint and raises
TrainingInterrupted, whose message says how to resume; the CLI exits 128 + the signal number (130, 143),
as a shell does. A second signal aborts at once (the last checkpoint on disk is kept: files are only
ever replaced atomically).

Other commands (predict, eval, data check, ...): SIGTERM raises Terminated in the main process
(raise_on_sigterm), so files being written are finished or removed, and the CLI exits 143 with one line;
SIGINT is Python's KeyboardInterrupt, exit 130.

No torch import here: the CLI imports this module to map the exceptions to exit codes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Under torchrun a signal sent to the whole process group reaches each training process twice: directly, and
# forwarded by the launcher a moment later. A repeat this soon is that echo, not a second request.
UNDER_LAUNCHER = "TORCHELASTIC_RUN_ID" in os.environ
FORWARDED_WITHIN = 5.0


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; exit_code is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Terminated(Exception):
    """SIGTERM reached a command with nothing to checkpoint (predict, eval, data check, ...): raised in the main
    process so that its `finally` blocks and context managers run; the CLI exits 143 with one line."""

    exit_code = 128 + signal.SIGTERM


def raise_on_sigterm() -> None:
    """Make SIGTERM raise Terminated in this (main) process instead of ending it on the spot.

    `timeout`, `kill -- -PGID`, systemd and Slurm signal the whole process group: the worker processes
    ignore the signal (leave_signals_to_parent) and end when the main process closes them. A child forked
    before it resets its handlers ignores the signal here too: only the main process acts on it."""
    pid = os.getpid()

    def handler(signum: int, frame) -> None:
        global _terminated
        if os.getpid() != pid:
            return
        _terminated = True
        if _importing(frame):
            # raised inside an import, the exception can cross C++ module initialisation (torch's), which aborts
            # the process, or a weakref callback, which drops it: ask again once the import is done
            threading.Timer(RETRY_SECONDS, os.kill, (pid, signal.SIGTERM)).start()
            return
        raise Terminated("SIGTERM: stopped")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        sys.unraisablehook = _quiet_when_terminated


_terminated = False
RETRY_SECONDS = 0.05


def _importing(frame) -> bool:
    """Is the main thread inside an import (any frame of importlib's machinery on the stack)?"""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def terminated() -> bool:
    """Has SIGTERM reached this process since raise_on_sigterm()? True even when the Terminated it raised was
    lost: a signal that lands in a weakref callback or __del__ (e.g. inside the import machinery) has its
    exception printed and dropped by Python, and the command would run on and exit 0."""
    return _terminated


def _quiet_when_terminated(unraisable, _default=sys.unraisablehook) -> None:
    """sys.unraisablehook: a Terminated that Python had to drop is not an error to print (terminated() keeps
    it), nor, once SIGTERM has come, an AttributeError in a __del__: the object's __init__ was cut short by the
    signal (a DataLoader iterator stopped while starting its workers has no `_workers_status` to shut them down
    by; end_children does it). Anything else goes to the default hook."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, Terminated):
        return
    if _terminated and unraisable.exc_type is AttributeError and \
            getattr(unraisable.object, "__name__", "") == "__del__":
        return
    _default(unraisable)


def end_children(grace: float = 5.0) -> list[int]:
    """Kill the worker processes still alive when a command stops on a signal, and wait for them; their pids.

    A command's workers are normally closed by the code that started them. One that a signal cut short while it
    was starting them (a DataLoader iterator interrupted in its __init__) never will, and since workers ignore
    SIGTERM (leave_signals_to_parent), multiprocessing's exit handler, which terminates and joins daemonic
    children, would then wait for them forever. Workers only read images or write through atomic renames, so
    killing them loses nothing."""
    import multiprocessing

    if threading.current_thread() is threading.main_thread():
        # torch's DataLoader installs a SIGCHLD handler that raises when a worker dies by a signal: ours is on purpose
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pids = []
    for child in multiprocessing.active_children():
        child.kill()
        child.join(grace)
        pids.append(child.pid)
    return pids


def leave_signals_to_parent(*_args) -> None:
    """Initializer of worker processes (DataLoader workers, decoding and synthesis pools): Ctrl-C and SIGTERM
    to the process group are for the main process, which finishes cleanly and then ends its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A batch being sent when the stopping main process closes its end of the queue: nobody is left to tell
    # (multiprocessing would print the BrokenPipeError's traceback from the worker's feeder thread).
    import multiprocessing.queues

    default = multiprocessing.queues.Queue._on_queue_feeder_error
    if not getattr(default, "_cnnlab", False):
        def quiet(error, obj) -> None:
            if not isinstance(error, BrokenPipeError):
                default(error, obj)

        quiet._cnnlab = True
        multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(quiet)


class StopOnSignal:
    """`with StopOnSignal() as stop:` ... `if stop.signum: save and raise`. Restores the old handlers on exit.

    Installed only in the main thread of the main process (signal handlers can only be set there).
    DataLoader workers are forked inside the block and inherit the handler; it ignores the signal in
    them, so Ctrl-C in a terminal (which signals the whole process group) does not kill the workers
    while the main process finishes its step.
    """

    def __init__(self, stream=None):
        self.signum: int | None = None
        self.stream = stream or sys.stderr
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        self._first = 0.0  # when the first signal came

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker: the main process decides when to stop
        name = signal.Signals(signum).name
        if self.signum is not None:
            if UNDER_LAUNCHER and time.monotonic() - self._first < FORWARDED_WITHIN:
                return  # torchrun forwards the signal its process group also got: the same request, not a second
            raise TrainingInterrupted(signum, f"{name} again: stopped at once, without a new checkpoint "
                                              "(the last one on disk is kept)")
        self.signum = signum
        self._first = time.monotonic()
        if os.environ.get("RANK", "0") != "0":
            return  # of several training processes, rank 0 speaks for all
        try:
            print(f"\n{name}: finishing this step and saving a checkpoint "
                  f"({'press Ctrl-C again' if signum == signal.SIGINT else 'send it again'} to stop at once)",
                  file=self.stream, flush=True)
        except RuntimeError:  # the signal came in the middle of a write to the same stream (reentrant call)
            pass
