"""Rich progress bars with rate and ETA, shared by every long-running loop."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, with the unit given in the task's ``unit`` field (default ``it``)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"? {unit}/s", style="progress.data.speed")


def make_progress(*, transient: bool = False, extra_field: str | None = "info") -> Progress:
    """A progress bar: description, bar, n/total, %, rate, elapsed, ETA and a free ``info`` text field."""
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
