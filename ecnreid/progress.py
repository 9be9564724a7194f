"""Progress shared by every long-running loop: rich bars with rate and ETA on a terminal, and plain lines every
few percent where the console is not a terminal (a log file, nohup, CI), which bars would fill with fragments."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _ProgressConsole(Console):
    """The shared console. Off a terminal (a log file, nohup, CI) a printed line stays one line instead of being
    wrapped at the default 80 columns, so that a log reads and greps like the run printed it."""

    @property
    def soft_wrap(self) -> bool:
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value


console = _ProgressConsole(stderr=True)


def _rate(task: Task) -> str:
    unit = task.fields.get("unit", "it")
    speed = task.finished_speed or task.speed
    return f"{speed:,.1f} {unit}/s" if speed else f"? {unit}/s"


class RateColumn(ProgressColumn):
    """Items per second, with the unit given in the task's ``unit`` field (default ``it``)."""

    def render(self, task: Task) -> Text:
        return Text(_rate(task), style="progress.data.speed")


class LineProgress(Progress):
    """A ``Progress`` that draws no bar: while started (``with``), it prints one plain line each time a visible
    task passes another ``step`` percent of its total, and when it completes."""

    def __init__(self, *, step: int, extra_field: str | None) -> None:
        super().__init__(console=console, disable=True)
        self.step = step
        self.extra_field = extra_field
        self._printed: dict[TaskID, int] = {}
        self._started = False

    def start(self) -> None:
        self._started = True

    def stop(self) -> None:
        self._started = False

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        task = self._tasks[task_id]
        self._printed[task_id] = self._steps_done(task)  # a resumed task starts where it was
        return task_id

    def _steps_done(self, task: Task) -> int:
        if not task.total:
            return 0
        return 100 if task.completed >= task.total else int(100 * task.completed / task.total) // self.step

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        task = self._tasks[task_id]
        done = self._steps_done(task)
        if self._started and task.visible and done > self._printed[task_id]:
            self._printed[task_id] = done
            self._print_line(task)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print_line(self, task: Task) -> None:
        total = int(task.total or 0)
        percent = 100 * task.completed / total if total else 100.0
        line = f"{task.description}: {int(task.completed):,}/{total:,} ({percent:.0f}%), {_rate(task)}"
        line += f", {task.elapsed or 0.0:.0f} s"
        extra = task.fields.get(self.extra_field, "") if self.extra_field else ""
        console.print(f"{line}  {extra}" if extra else line, markup=False, highlight=False, soft_wrap=True)


def make_progress(*, transient: bool = False, extra_field: str | None = "info") -> Progress:
    """A progress bar: description, bar, n/total, %, rate, elapsed, ETA and a free ``info`` text field.

    Where the console is not a terminal, a ``LineProgress`` instead: a line every 10 % (every 50 % for the
    ``transient`` bars of short steps, which a terminal clears when they end)."""
    if not console.is_terminal:
        return LineProgress(step=50 if transient else 10, extra_field=extra_field)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    if extra_field:
        columns.append(TextColumn(f"{{task.fields[{extra_field}]}}"))
    return Progress(*columns, console=console, transient=transient, refresh_per_second=4)
