"""Option parsers and error reporting shared by the ``napari-atagan`` subcommands.

The parsers are argparse ``type=`` functions: a bad value ends in argparse's
usage message and exit code 2. The reporting functions turn a user mistake into
one line on stderr (exit code 2) and an interruption into exit code 130.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._config import DEVICES as DEVICE_CHOICES

EXIT_USAGE = 2
EXIT_STOPPED = 130


# --------------------------------------------------------------------------- option values
def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _word_or_number(text: str, words: tuple[str, ...], expected: str) -> float | str:
    """One of ``words`` (in any case, lower-cased), else ``text`` as a float; ``expected``
    says what was expected when it is neither."""
    word = text.strip().lower()
    if word in words:
        return word
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def diameter_or_auto(text: str) -> float | str:
    """A cell diameter in pixels (> 0), or ``"auto"`` to estimate it from the image."""
    value = _word_or_number(text, ("auto",), "a cell diameter in pixels or 'auto'")
    if value != "auto" and not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the cell diameter must be > 0 pixels, got {text}")
    return value


THRESHOLD_HELP = ("how attention becomes cells: 'local' (each cell cut at a quarter of its "
                  "own peak, so dim cells count as much as bright ones), 'otsu' (one "
                  "automatic level for the whole image, found on the square root of the map) "
                  "or a number (one fixed level) (default: %(default)s)")


def threshold_choice(text: str) -> float | str:
    """An attention threshold: ``"local"``, ``"otsu"`` or a finite number."""
    value = _word_or_number(text, ("local", "otsu"), "'local', 'otsu' or a number")
    if not isinstance(value, str) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the threshold must be a finite number, got {text}")
    return value


def cut_choice(text: str) -> float | str:
    """Where a cell's edge is cut: ``"auto"`` or a fraction strictly between 0 and 1."""
    value = _word_or_number(text, ("auto",), "'auto' or a fraction")
    if value != "auto" and not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"the cut must lie between 0 and 1, got {text}")
    return value


CUT_HELP = ("where each cell's edge is cut, as a fraction of the way from the background to "
            "the cell's own level: 'auto' (default) picks it per slide between 0.25 and 0.5 "
            "so that the cells' median diameter comes closest to --diameter, so cells come "
            "out as wide as you measure them (whole cells or nuclei); or a fixed fraction, "
            "e.g. 0.35 (with --outline image)")


CHANNEL_HELP = ("the channel of a colour or multi-channel image to use, counted from 0 "
                "(default: the stained channel, chosen automatically as the one with the "
                "largest spread of values; the choice is reported)")


def channel_option(args: argparse.Namespace) -> int | str | None:
    """What ``--channel`` and ``--grey`` ask for: an index, ``"grey"``, or ``None`` (auto)."""
    channel = getattr(args, "channel", None)
    if getattr(args, "grey", False):
        if channel is not None:
            raise ValueError("--grey and --channel exclude each other: choose one")
        return "grey"
    return channel


def read_slide(path: Any, channel: int | str | None) -> tuple[Any, dict[str, Any]]:
    """:func:`napari_atagan.channels.read_grey`, saying the channel chosen on stderr."""
    from ..channels import read_grey

    return read_grey(path, channel, say=lambda text: print(text, file=sys.stderr))


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


# --------------------------------------------------------------------------- paths
def check_file(path: str, option: str) -> None:
    """Raise ValueError unless ``path`` (given as ``option``) is an existing file."""
    if not Path(path).is_file():
        raise ValueError(f"{option} {path!r} does not exist or is not a file")


def check_out_folder(path: str) -> None:
    """Raise ValueError when the ``--out`` folder is an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {path!r} is a file, not a folder")


# --------------------------------------------------------------------------- reporting
def is_user_runtime_error(exc: RuntimeError) -> bool:
    """Device errors (no GPU) are the user's to fix; other RuntimeErrors are bugs."""
    return "was asked for but" in str(exc)


def report_user_error(command: str, exc: Exception) -> int:
    """Print a user mistake as one line on stderr and return exit code 2.

    A RuntimeError counts as a user mistake only when it is about the device;
    any other RuntimeError is a bug and is raised again, with its traceback.
    """
    if isinstance(exc, RuntimeError) and not is_user_runtime_error(exc):
        raise exc
    print(f"napari-atagan {command}: error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def report_interrupted(command: str) -> int:
    """Say on stderr that ``command`` was interrupted and return exit code 130."""
    print(f"napari-atagan {command}: interrupted", file=sys.stderr)
    return EXIT_STOPPED


def progress_bar(total: int, desc: str):
    """A tqdm bar of steps on stderr (a line every 30 s when stderr is a log file)."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    # In a log file, a line every half minute instead of a redraw several times a second.
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=tty,
                mininterval=0.1 if tty else 30.0, ascii=not tty)


class TextProgress:
    """``label  37/120 (31%)`` on stderr, rewritten in place; quiet when not a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if not self.tty and done < total:
            return
        if done < total and pct - self.last < 1.0:
            return
        self.last = pct
        print(f"\r{self.label} {done}/{total} ({pct:.0f}%)", end="", file=sys.stderr,
              flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)
            self.shown = False


@contextmanager
def stop_on_signals(stop: threading.Event, what: str) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` (a second Ctrl-C interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(f"\n{what} (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    handlers: dict[int, Callable[..., Any] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, ask)
    try:
        yield
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)


def follow_training(events: Iterable[Any], total: int, desc: str, *, start: int = 0,
                    losses: Mapping[str, str] | None = None) -> Any:
    """Show a training run's events on stderr and return its ``Finished`` event.

    The bar appears with the first event (a run refused while reading its data
    shows only its error); ``start`` is the step a resumed run begins at, so the
    rate and time left count this run's steps. ``losses`` maps the losses to show
    to their short names (default: all, by their own names). The events are
    closed at the end, also on an interruption: the engines then save a
    complete checkpoint.
    """
    from ..events import CheckpointSaved, Finished, Message, Progress

    bar = result = None
    try:
        for ev in events:
            if bar is None:
                bar = progress_bar(total, desc)
                if start:
                    bar.n = bar.initial = min(start, total)
                    bar.refresh()
            if isinstance(ev, Progress):
                if ev.step < bar.n:  # resumed from an earlier step than shown: jump back
                    bar.reset()
                bar.update(ev.step - bar.n)
                names = losses or {k: k for k in ev.losses}
                shown = {short: f"{ev.losses[k]:.3f}" for k, short in names.items()
                         if k in ev.losses}
                bar.set_postfix(shown | {"img/s": f"{ev.images_per_s:.0f}"}, refresh=False)
            elif isinstance(ev, Message):
                bar.write(ev.text, file=sys.stderr)
            elif isinstance(ev, CheckpointSaved):
                bar.write(f"checkpoint: {ev.path} (step {ev.step})", file=sys.stderr)
            elif isinstance(ev, Finished):
                result = ev
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
        if bar is not None:
            bar.close()
    return result
