"""The progress events every training loop of the product yields.

A training generator (ATA-GAN's :func:`napari_atagan.gan.train`, the
translator's :func:`napari_atagan.translate.train_translation`) yields
:class:`Message`, :class:`Progress`, :class:`Samples` and
:class:`CheckpointSaved` events and ends with :class:`Finished`. The command
line prints them and the napari widgets run the same generators in a worker
thread, so every front end drives every model family the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointSaved",
    "Event",
    "Finished",
    "Message",
    "Progress",
    "Samples",
    "StopSignal",
    "Stopped",
    "run_to_end",
    "should_stop",
]

CHECKPOINT_NAME = "checkpoint.safetensors"


class Stopped(Exception):
    """Raised when a ``stop`` callback asked to abort a computation (a slide's attention,
    a translation, an archive's slide): nothing partial is kept."""


@dataclass
class Message:
    """Something worth telling the user (teacher accuracy, a smaller batch, ...)."""

    text: str


@dataclass
class Progress:
    step: int
    total_steps: int
    losses: dict[str, float]
    images_per_s: float
    eta_s: float
    elapsed_s: float
    batch_size: int


@dataclass
class Samples:
    """A few images of the model in training, in [-1, 1], shape (n, S, S) (ATA-GAN:
    cells of the averaged generator; translation: the rows of its preview)."""

    step: int
    images: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class CheckpointSaved:
    step: int
    path: Path


@dataclass
class Finished:
    checkpoint: Path
    summary: dict[str, Any]
    stopped: bool = False


Event = Message | Progress | Samples | CheckpointSaved | Finished
StopSignal = Callable[[], bool] | threading.Event | None


def should_stop(stop: StopSignal) -> bool:
    """Whether a stop signal (a callable or a ``threading.Event``) asks to stop."""
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def run_to_end(events: Iterator[Event], on_event: Callable[[Event], None] | None = None
               ) -> Finished:
    """Drive a training generator to the end (for scripts and tests); returns its
    :class:`Finished` event."""
    last = None
    for ev in events:
        if on_event is not None:
            on_event(ev)
        last = ev
    if not isinstance(last, Finished):  # pragma: no cover - defensive
        raise RuntimeError("training ended without a Finished event")
    return last
