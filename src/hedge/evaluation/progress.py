"""A plain-text progress bar with a rate and an ETA, for stderr.

On a terminal the bar is redrawn in place; otherwise (a log file, CI) a line is written at most
every `interval_s`, and at the end. The ETA counts only the cases run by this process, so a
resumed run's estimate is not flattered by the cases it skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(
    label: str, done: int, total: int, passed: int, errors: int, ran: int, elapsed_s: float
) -> str:
    """One progress line. `ran` cases took `elapsed_s` in this process; `done` counts the
    skipped ones too."""
    fraction = done / total if total else 1.0
    filled = round(BAR_WIDTH * fraction)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    rate = ran / elapsed_s if ran and elapsed_s > 0 else None
    eta = (total - done) / rate if rate else None
    rate_text = f"{rate:.2f}/s" if rate else "-/s"
    return (
        f"{label} [{bar}] {done}/{total} {100 * fraction:3.0f}%  passed {passed}  "
        f"errors {errors}  {rate_text}  ETA {eta_text(eta if done < total else 0)}"
    )


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        *,
        already: int,
        already_passed: int = 0,
        already_errors: int = 0,
        stream: TextIO,
        enabled: bool,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = already
        self.ran = 0
        self.passed = already_passed
        self.errors = already_errors
        self._stream = stream
        self._enabled = enabled
        self._tty = enabled and stream.isatty()
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._last_line = float("-inf")
        self._show(force=True)

    def advance(self, *, passed: bool, error: bool) -> None:
        self.done += 1
        self.ran += 1
        self.passed += int(passed)
        self.errors += int(error)
        self._show(force=self.done >= self.total)

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _show(self, *, force: bool) -> None:
        if not self._enabled:
            return
        now = self._clock()
        line = render(
            self.label,
            self.done,
            self.total,
            self.passed,
            self.errors,
            self.ran,
            now - self._started,
        )
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
        elif force or now - self._last_line >= self._interval_s:
            self._stream.write(line + "\n")
            self._last_line = now
        else:
            return
        self._stream.flush()
