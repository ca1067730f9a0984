"""Progress with an ETA: a tqdm bar on a terminal, plain periodic lines otherwise (readable in log files)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def _plain_lines(iterable: Iterable[T], total: int | None, desc: str, every_s: float, stream) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            last = now
            elapsed = now - start
            line = f"{desc}: {done}" + (f"/{total} ({100 * done / total:.0f}%)" if total else "")
            line += f" elapsed {_format_seconds(elapsed)}"
            if total and done < total:
                line += f" ETA {_format_seconds(elapsed / done * (total - done))}"
            print(line, file=stream, flush=True)


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    every_s: float = 30.0,
    stream=None,
) -> Iterable[T]:
    """Wrap ``iterable`` to report progress on ``stream`` (stderr by default) when ``enabled``."""
    if not enabled:
        return iterable
    stream = stream or sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, file=stream, dynamic_ncols=True)
    return _plain_lines(iterable, total, desc, every_s, stream)
