"""The CLI's progress bar for indexing and verifying (Rich), on stderr and only on a terminal.

It counts files and bytes against the totals the indexer announces once it has listed the
archive path (``total``), so it shows ``12/40 files`` and ``3.1/9.8 MB`` from the start, not
``0/?``. Files found unchanged are counted done without being read (``skip``), and the rate is
that of the bytes actually read over the time spent: skipping a thousand unchanged files in a
millisecond does not show as gigabytes a second.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _FilesColumn(ProgressColumn):
    """``done/total files`` (``done files`` while the total is unknown)."""

    def render(self, task: Task) -> Text:
        done, total = task.fields["files"], task.fields["files_total"]
        return Text(f"{done}/{total} files" if total is not None else f"{done} files")


class _RateColumn(ProgressColumn):
    """Bytes read (not skipped) per second since the start."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        if not elapsed or not task.fields["read"]:
            return Text("?/s", style="progress.data.speed")
        return Text(f"{decimal(int(task.fields['read'] / elapsed))}/s",
                    style="progress.data.speed")


class Bar:
    """The indexer's progress object: ``bar(path, size)`` once a file is read,
    ``bar.total(files, size)`` once listed, ``bar.skip(files, size)`` for unread files.
    Called from hashing threads."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self.files = self.read = 0
        self.task = progress.add_task(description, total=None, files=0, files_total=None,
                                      read=0)

    def total(self, files: int, size: int) -> None:
        self._progress.update(self.task, total=size, files_total=files)

    def skip(self, files: int, size: int) -> None:
        with self._lock:
            self.files += files
            self._progress.update(self.task, advance=size, files=self.files)

    def __call__(self, path: str, size: int) -> None:
        with self._lock:
            self.files += 1
            self.read += size
            self._progress.update(self.task, advance=size, files=self.files, read=self.read)


@contextmanager
def progress_bar(description: str, enabled: bool,
                 console: Console | None = None) -> Iterator[Bar | None]:
    """A bar on ``console`` (default: stderr, when it is a terminal); None otherwise."""
    if console is None:
        if not enabled or not sys.stderr.isatty():
            yield None
            return
        console = Console(stderr=True)
    elif not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
               _FilesColumn(), DownloadColumn(), _RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield Bar(progress, description)
