"""Progress bars: drawn on a terminal, silent off one and with quiet."""

from __future__ import annotations

import io
import sys

from rankly.engine.offline import progress


def test_a_bar_is_drawn_on_a_terminal(tty_stderr):
    tty_stderr.as_stderr()
    with progress.bar(10, "loading") as bar:
        bar.update(10)
    text = tty_stderr.output()
    assert "loading" in text and "100%" in text and "10/10" in text


def _run_every_helper(**kwargs):
    """Draw a bar, track an iterable and step through labels; check what they yield."""
    with progress.bar(10, "loading", **kwargs) as bar:
        bar.update(10)
    assert list(progress.track(range(3), "users", **kwargs)) == [0, 1, 2]
    assert list(progress.steps(["a", "b"], **kwargs)) == ["a", "b"]


def test_nothing_is_written_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    _run_every_helper(stream=stream)
    assert stream.getvalue() == ""


def test_nothing_is_written_with_quiet_even_on_a_terminal(tty_stderr):
    tty_stderr.as_stderr()
    _run_every_helper(quiet=True)
    assert tty_stderr.output() == ""


def test_the_default_stream_is_stderr_at_call_time(tty_stderr):
    tty_stderr.as_stderr()
    assert progress.enabled()
    assert not progress.enabled(quiet=True)
    assert not progress.enabled(stream=io.StringIO())
    sys.stderr.close()
    assert not progress.enabled()  # a closed stream is no terminal


def test_track_counts_the_items_of_a_sized_iterable(tty_stderr):
    tty_stderr.as_stderr()
    assert list(progress.track([5, 6, 7], "users", unit="user")) == [5, 6, 7]
    assert "3/3" in tty_stderr.output()


def test_steps_show_each_label_and_count_a_step_when_the_next_starts(tty_stderr):
    tty_stderr.as_stderr()
    seen = []
    for label in progress.steps(["training pop", "training ease"], desc="[demo]"):
        seen.append(label)
    text = tty_stderr.output()
    assert seen == ["training pop", "training ease"]
    assert "[demo] training pop" in text and "[demo] training ease" in text
    assert "2/2" in text
