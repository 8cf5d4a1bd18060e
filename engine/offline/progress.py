"""Progress bars for the long offline steps: tqdm on stderr, drawn only on a terminal.

Every long command (train, evaluate, recommend, datasets download, demo) reports through
these helpers, so they all behave alike: a bar on a terminal; nothing at all when the stream
is not a terminal (a log file, a pipe, CI) or when the user passed ``--quiet``. Results and
summaries are not progress: commands print those themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")


def enabled(quiet: bool = False, stream: IO[str] | None = None) -> bool:
    """True when a bar is drawn: not ``quiet`` and ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return not quiet and isatty is not None and bool(isatty())
    except ValueError:  # a closed stream
        return False


def bar(total: float | None = None, desc: str = "", quiet: bool = False, *,
        unit: str = "it", unit_scale: bool = False, leave: bool = True,
        stream: IO[str] | None = None) -> tqdm:
    """Return a progress bar on ``stream`` (default: stderr at call time); use it with ``with``.

    Advance it with ``.update(n)``; ``total`` None draws a counter without a percentage.
    When :func:`enabled` is false the bar is a no-op that writes nothing. ``unit_scale``
    shows 1.2M instead of 1200000 (set ``unit="B"`` for bytes).
    """
    from tqdm import tqdm  # on first use: the Ray driver imports this before it asks for workers

    stream = sys.stderr if stream is None else stream
    # NOTE: not dynamic_ncols: a terminal reporting 0 columns (a fresh pty) would get an
    # empty bar; a width read once at the start falls back to a 10-cell bar there.
    return tqdm(total=total, desc=desc or None, unit=unit, unit_scale=unit_scale, leave=leave,
                file=stream, disable=not enabled(quiet, stream))


def track(iterable: Iterable[T], desc: str = "", quiet: bool = False, *,
          total: float | None = None, unit: str = "it",
          stream: IO[str] | None = None) -> Iterator[T]:
    """Yield from ``iterable``, advancing a bar by one per item (``total``: its length when
    it has one); the bar closes when the iteration ends or is abandoned."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with bar(total, desc, quiet, unit=unit, stream=stream) as b:
        for item in iterable:
            yield item
            b.update(1)


def steps(labels: Sequence[str], quiet: bool = False, *, desc: str = "",
          stream: IO[str] | None = None) -> Iterator[str]:
    """Yield each label in turn while the bar shows it (``desc`` first) and counts the steps
    done; a step counts as done when the next one is asked for, or the iteration ends."""
    with bar(len(labels), desc, quiet, unit="step", stream=stream) as b:
        for label in labels:
            b.set_description_str(f"{desc} {label}".strip())
            yield label
            b.update(1)
