"""Runtime helpers: how stop signals reach loader workers and how their traces are recognised."""

from __future__ import annotations

import os
import signal
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from ecnreid.runtime import is_interruption, leave_stops_to_the_main_process


def _worker_pid_after_sigterm(worker_init_fn) -> tuple[int, bool]:
    loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=1, worker_init_fn=worker_init_fn)
    batches = iter(loader)
    next(batches)  # the worker is up and has run its init function
    pid = batches._workers[0].pid  # noqa: SLF001 - the only way to reach the worker process
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    alive = batches._workers[0].is_alive()  # noqa: SLF001
    if alive:
        assert sum(1 for _ in batches) == 15  # and it still serves the rest of the pass
    del batches
    return pid, alive


def test_loader_workers_leave_sigterm_to_the_main_process() -> None:
    # A stop sent to the whole process group (timeout, kill -- -PGID, a scheduler) must not kill the workers
    # before the main process has saved its state; without the init function it does.
    _, alive = _worker_pid_after_sigterm(leave_stops_to_the_main_process)
    assert alive
    previous = signal.getsignal(signal.SIGCHLD)
    try:
        _, alive_without = _worker_pid_after_sigterm(None)
    except RuntimeError as exc:  # torch's SIGCHLD handler may already report the dead worker
        assert is_interruption(exc)
        alive_without = False
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert not alive_without


def test_is_interruption() -> None:
    assert is_interruption(KeyboardInterrupt())
    assert is_interruption(RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated. "))
    assert not is_interruption(RuntimeError("DataLoader worker (pid 7) exited unexpectedly with exit code 1"))
    assert not is_interruption(ValueError("killed by signal"))
