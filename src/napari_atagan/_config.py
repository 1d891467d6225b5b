"""What the config of every kind of run shares (:class:`~napari_atagan.gan.TrainConfig`,
:class:`~napari_atagan.translate.TranslateConfig`).

A run's options are one dataclass, saved with its weights as a dict and read back
from it, and set one at a time from the command line as ``--set NAME=VALUE``.
:class:`RunConfig` does those three things the same way for every kind of run, so
a saved config with a misspelt option, or a ``--set`` of the wrong type, is refused
with the same kind of message whichever model it is for.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

DEVICES = ("auto", "cuda", "mps", "cpu")
"""The devices a config may name (a numbered CUDA device, ``"cuda:1"``, as well)."""


def check_device(device: Any) -> None:
    """A clear ValueError unless ``device`` is one of :data:`DEVICES` or ``"cuda:N"``."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


class RunConfig:
    """Mixin of a run's config dataclass: to and from a dict, one option from text.

    ``KIND`` names the run in messages (``"training"``: "unknown training option
    'x'"); ``SAVED_BEFORE`` holds options whose default changed when they were
    added, with the value runs saved before them were made with, so that an older
    saved config that lacks one is read as that value, not as today's default. A
    field named ``extra`` (free-form notes) is saved but never set with ``--set``.
    """

    KIND: ClassVar[str] = "run"
    SAVED_BEFORE: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build from a saved run's dict, refusing unknown keys so typos are caught; an
        option the dict lacks takes its default, or its value in ``SAVED_BEFORE``."""
        if not isinstance(d, dict):
            raise ValueError(f"a {cls.KIND} config must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} option(s): {', '.join(unknown)}")
        return cls(**{**cls.SAVED_BEFORE, **d})

    @classmethod
    def parse_option(cls, text: str) -> tuple[str, Any]:
        """Read ``"name=value"`` (value in JSON: ``0.5``, ``true``, ``[16, 32]``, ``mask``).

        The value must have the field's type (an int is accepted for a float field,
        a list of numbers for a tuple field). Raises ``ValueError`` naming the
        problem, e.g. for an unknown name.
        """
        name, sep, raw = str(text).partition("=")
        name = name.strip().replace("-", "_")
        options = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name != "extra"]
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {text!r}")
        if name not in options:
            raise ValueError(f"unknown {cls.KIND} option {name!r}; options: "
                             + ", ".join(sorted(options)))
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        default = getattr(cls(), name)
        if not _OF_TYPE[type(default)](value):
            raise ValueError(f"{name} must be {type(default).__name__} like {default!r}, "
                             f"got {raw!r}")
        return name, float(value) if isinstance(default, float) else value

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (checked as a new config is)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_OF_TYPE = {bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: _number,
            str: lambda v: isinstance(v, str),
            tuple: lambda v: isinstance(v, list) and all(_number(x) for x in v)}
"""Whether a value read from ``--set`` fits a field whose default has that type."""
