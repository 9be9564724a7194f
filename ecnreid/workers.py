"""How many DataLoader worker processes a command may start: at most the CPUs this process may use, since
more only contend for them (and torch warns about each loader that asks for more)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ecnreid.progress import console

_announced: set[tuple[int, int]] = set()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def capped_workers(requested: int, *, announce: bool = True) -> int:
    """``requested`` workers, at most ``usable_cpus()``; ``announce`` says so in one line when it caps (once
    per process for the same numbers)."""
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    if announce and (requested, cpus) not in _announced:
        _announced.add((requested, cpus))
        console.print(
            f"--workers {requested}: this process may use {cpus} CPU{'s' if cpus != 1 else ''}; "
            f"using {cpus} worker process{'es' if cpus != 1 else ''}",
            highlight=False,
            soft_wrap=True,
        )
    return cpus


def with_capped_workers(config: Any, settings: dict[str, Any]) -> Any:
    """``config`` with every ``workers`` setting of its tree at most the usable CPUs (``capped_workers``); a
    number the user gave (``settings``: file and command line) is capped with a notice, the default silently,
    so that a small machine's errors stay one line."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        given = settings.get(f.name) if isinstance(settings, dict) else None
        if f.name == "workers" and isinstance(value, int):
            announce = given is not None and os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 speaks
            changes[f.name] = capped_workers(value, announce=announce)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = with_capped_workers(value, given or {})
    return dataclasses.replace(config, **changes)
