"""Safe checkpoints: one ``.safetensors`` file with weights plus JSON metadata.

A checkpoint never contains pickled Python objects, so opening a model file that
someone shared cannot run code.  Everything lives in one file:

* tensors, keyed by prefix: ``G.`` (generator), ``G_ema.`` (its moving average),
  ``D.`` (discriminator), optionally ``teacher.``, ``optim.<name>.state.<i>.<key>``
  (optimizer moments), ``rng.`` (random-number-generator states) and anything the
  caller adds;
* one JSON document in the safetensors header metadata under the key
  ``"napari_atagan"``: the format version, the model ``family``, its config (a
  :class:`TrainConfig` for ATA-GAN checkpoints), class names,
  the caller's notes (intensity normalisation, data facts, teacher, step, timings,
  training summary), the optimizers' hyper-parameters, the model architectures,
  software versions, the creation time and a checksum of the tensor data.

Model families: the product trains more than one kind of model. The metadata
key ``family`` says which (:data:`FAMILIES`): ``"atagan"`` (the default, also
for files written before the key existed) or ``"translate"`` (attention-guided
image-to-image translation, :mod:`napari_atagan.translate`). Each family has
its own config class. :func:`load_checkpoint` opens ATA-GAN checkpoints unless
asked for another family, and refuses a file of another family with a message
that says what the file is and how to open it.

Writing is atomic: the file is written under a temporary name in the same folder,
flushed to disk and then renamed over the target, so a crash never leaves a
half-written checkpoint and never damages the previous one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load as _safetensors_from_bytes
from safetensors.torch import save as _safetensors_to_bytes
from torch import nn

from . import __version__
from ._checkpoint_file import (  # noqa: F401 - the file format, checked without torch
    DEFAULT_FAMILY,
    FAMILIES,
    FORMAT_VERSION,
    METADATA_KEY,
    SUFFIX,
    CheckpointError,
    check_bytes,
    check_checkpoint,
    checkpoint_error,
    read_file,
)

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "Checkpoint",
    "CheckpointError",
    "check_checkpoint",
    "checkpoint_error",
    "DEFAULT_FAMILY",
    "FAMILIES",
    "config_family",
    "load_checkpoint",
    "load_module_state",
    "load_optimizer_state",
    "restore_rng",
    "rng_tensors",
    "save_checkpoint",
    "with_module",
]

GENERATOR_STATISTICS = "standing"
"""Metadata value ``generator_statistics`` of a checkpoint whose averaged generator
carries standing BatchNorm statistics (see :func:`napari_atagan.gan.models.standing_statistics`);
older checkpoints get them when their generator is loaded."""

def config_family(config: Any) -> str:
    """The family of a config object: its class attribute ``FAMILY``, else ATA-GAN."""
    family = getattr(type(config), "FAMILY", DEFAULT_FAMILY)
    if family not in FAMILIES:
        raise ValueError(f"config class {type(config).__name__} names an unknown model "
                         f"family {family!r}; known: {', '.join(FAMILIES)}")
    return family


def _family_module(family: str) -> Any:
    """The module that rebuilds a family's networks (imported by name: this shared
    module knows the families only through :data:`FAMILIES`)."""
    return importlib.import_module(FAMILIES[family].networks)


_WRITE_CHUNK = 1 << 20
# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike,
    *,
    config: Any,
    modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
    metadata: Mapping[str, Any] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    Parameters
    ----------
    path:
        Target file; ``.safetensors`` is appended when the name lacks it.  Missing
        parent folders are created.  An existing file is replaced only once the new
        one is completely on disk.
    config:
        The training configuration (stored as JSON): a :class:`TrainConfig`, or
        another family's config dataclass with ``to_dict()``; its class attribute
        ``FAMILY`` is written as the metadata's ``family`` (``"atagan"`` without one).
    modules:
        Networks (or plain state dicts) by prefix, e.g. ``{"G": G, "G_ema": G_ema,
        "D": D}``.  Names must not contain dots.
    metadata:
        JSON-compatible notes: ``class_names``, ``intensity``, ``data``, ``teacher``,
        ``step``, ``timings``, ``summary``, ...  The keys ``format_version``,
        ``config``, ``modules``, ``optimizers``, ``versions``, ``created`` and
        ``checksum`` are written by this function (values passed for them, e.g.
        when re-saving a loaded checkpoint's metadata, are replaced); so is
        ``family``, which follows the config.
    optimizers:
        Optimizers by name (e.g. ``{"G": opt_g, "D": opt_d}``); their tensors are
        stored under ``optim.<name>.`` and their hyper-parameters in the JSON.
    extra_tensors:
        More tensors by full key, e.g. ``{"rng.data": data_generator.get_state()}``.

    The global torch RNG states (:func:`rng_tensors`) are always stored too, so a
    run can resume exactly where it stopped.
    """
    path = _with_suffix(Path(path))
    if not callable(getattr(config, "to_dict", None)):
        raise ValueError(f"config must be a config dataclass with to_dict(), got "
                         f"{type(config).__name__}")
    family = config_family(config)
    tensors: dict[str, torch.Tensor] = {}
    module_info: dict[str, Any] = {}
    for name, module in modules.items():
        _check_name(name, "module")
        module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
        module_info[name] = _module_record(module)
        state = module.state_dict() if isinstance(module, nn.Module) else module
        _add_tensors(tensors, {f"{name}.{k}": v for k, v in state.items()})

    optimizer_info: dict[str, Any] = {}
    for name, optimizer in (optimizers or {}).items():
        _check_name(name, "optimizer")
        optimizer_info[name], optim_tensors = _optimizer_to_parts(name, optimizer)
        _add_tensors(tensors, optim_tensors)

    _add_tensors(tensors, rng_tensors())
    if extra_tensors:
        _add_tensors(tensors, dict(extra_tensors), replace_prefix="rng.")

    document = dict(metadata or {})
    document.update(
        format_version=FORMAT_VERSION,
        family=family,
        config=config.to_dict(),
        modules=module_info,
        optimizers=optimizer_info,
        versions=_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return _write_document(path, tensors, document)


_WRITTEN_KEYS = frozenset(("format_version", "family", "config", "modules", "optimizers",
                           "versions", "created", "checksum"))
"""Metadata keys the checkpoint itself writes (see :func:`save_checkpoint`)."""


def _write_document(path: Path, tensors: dict[str, torch.Tensor], document: dict) -> Path:
    """``tensors`` and the metadata ``document`` (its checksum set here) written
    atomically to ``path``."""
    document["checksum"] = _checksum(tensors)
    try:
        text = json.dumps(document, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata is not JSON-compatible: {exc}") from exc
    _write_atomically(path, _safetensors_to_bytes(tensors, metadata={METADATA_KEY: text}))
    return path


def _with_suffix(path: Path) -> Path:
    return path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX)


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"{what} name must be a non-empty string without dots, got {name!r}")


def _module_record(module: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Class name and, for our own networks, the constructor arguments."""
    if not isinstance(module, nn.Module):
        return {"class": "state_dict"}
    record: dict[str, Any] = {"class": type(module).__name__}
    hparams = getattr(module, "hparams", None)
    if isinstance(hparams, dict):
        record["hparams"] = hparams
    return record


def _add_tensors(
    tensors: dict[str, torch.Tensor],
    new: Mapping[str, torch.Tensor],
    replace_prefix: str | None = None,
) -> None:
    """Add contiguous CPU copies (never shared storage); refuse duplicate keys.

    Keys starting with ``replace_prefix`` may overwrite existing ones (a caller's
    own RNG states win over the automatic ones).
    """
    for key, value in new.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint tensor {key!r} is a {type(value).__name__}, not a tensor")
        if key in tensors and not (replace_prefix and key.startswith(replace_prefix)):
            raise ValueError(f"checkpoint tensor key {key!r} is given twice")
        tensors[key] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _optimizer_to_parts(
    name: str, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split an optimizer state dict into JSON (numbers, groups) and tensors."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    json_state: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        numbers: dict[str, Any] = {}
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.state.{index}.{key}"] = value
            else:
                numbers[key] = value
        json_state[str(index)] = numbers
    groups = [
        {key: _group_value(name, key, value) for key, value in group.items()}
        for group in state_dict["param_groups"]
    ]
    info = {
        "class": type(optimizer).__name__,
        "param_groups": groups,
        "state": json_state,
    }
    return info, tensors


def _group_value(name: str, key: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"optimizer {name!r}: param_group entry {key!r} is a tensor with "
                f"{value.numel()} values; only numbers can be saved"
            )
        return value.item()
    return value


def _versions() -> dict[str, str]:
    return {
        "napari_atagan": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def _json_default(value: Any) -> Any:
    """Turn numpy numbers/arrays, paths, tuples-in-sets etc. into JSON types."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be stored as JSON")


def _checksum(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """SHA-256 over keys, dtypes, shapes and bytes of all tensors (in key order)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return {"sha256": digest.hexdigest(), "n_tensors": len(tensors)}


def _write_all(file, data: bytes) -> None:
    """Write ``data`` in chunks (a separate function so a crash can be simulated)."""
    view = memoryview(data)
    for start in range(0, len(view), _WRITE_CHUNK):
        file.write(view[start : start + _WRITE_CHUNK])


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, mode)  # mkstemp makes 0600 files; keep a normal file mode
        with os.fdopen(fd, "wb") as file:
            _write_all(file, data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the OS allows it (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# random-number generators
# ---------------------------------------------------------------------------


def rng_tensors() -> dict[str, torch.Tensor]:
    """The global torch RNG states: ``rng.torch`` and, when in use, ``rng.cuda.<i>``."""
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{index}"] = state
    return states


def restore_rng(ckpt: Checkpoint | Mapping[str, torch.Tensor]) -> list[str]:
    """Restore the global torch RNG states saved by :func:`rng_tensors`.

    CUDA states are restored for the GPUs present here.  Returns the restored keys.
    Generators of your own (saved via ``extra_tensors``) are restored with
    ``generator.set_state(ckpt.tensors["rng.data"])``.
    """
    tensors = ckpt.tensors if isinstance(ckpt, Checkpoint) else ckpt
    restored = []
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to("cpu", torch.uint8))
        restored.append("rng.torch")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            key = f"rng.cuda.{index}"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key].to("cpu", torch.uint8), index)
                restored.append(key)
    return restored


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint: config, metadata and all tensors (by full key).

    ``config`` is a :class:`TrainConfig` for ATA-GAN checkpoints and the family's
    own config class otherwise (see :attr:`family`).
    """

    path: Path
    config: Any
    metadata: dict
    tensors: dict[str, torch.Tensor]
    _standing: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    """G_ema's standing statistics, once computed for a file saved without them."""
    _pattern_models: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """:meth:`pattern_model` by device, built once: the archive names every slide's cells
    with it, and rebuilding a classifier teacher took 0.09 s a slide on a CPU."""
    _built: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """What :meth:`built_once` made, by key."""

    @property
    def family(self) -> str:
        """The model family (``"atagan"`` or ``"translate"``, see :data:`FAMILIES`)."""
        family = self.metadata.get("family")
        return family if isinstance(family, str) else DEFAULT_FAMILY

    def _require_atagan(self, what: str) -> None:
        if self.family != DEFAULT_FAMILY:
            known = FAMILIES.get(self.family)
            title = known.title if known else f"a {self.family!r} checkpoint"
            opener = f"; {known.how_to_open()}" if known else ""
            raise checkpoint_error(self.path, f"is {title}, not an ATA-GAN checkpoint, so it has no "
                         f"ATA-GAN {what}{opener}")

    @property
    def class_names(self) -> list[str]:
        """Names of the staining patterns (may be empty)."""
        return list(self.metadata.get("class_names") or [])

    @property
    def n_classes(self) -> int:
        """Number of patterns the generator is conditioned on (0: unconditional)."""
        for name in ("G_ema", "G", "D"):
            hparams = self._hparams(name)
            if hparams is not None and "n_classes" in hparams:
                return int(hparams["n_classes"])
        return len(self.class_names)

    @property
    def step(self) -> int:
        """Training step at which the checkpoint was written (0 if unknown)."""
        return int(self.metadata.get("step") or 0)

    @property
    def module_names(self) -> list[str]:
        """Module prefixes stored in the file, e.g. ``["D", "G", "G_ema"]``."""
        return sorted((self.metadata.get("modules") or {}).keys())

    def has(self, prefix: str) -> bool:
        """Whether any tensor is stored under ``prefix`` (e.g. ``"teacher"``)."""
        prefix = prefix.rstrip(".") + "."
        return any(key.startswith(prefix) for key in self.tensors)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix`` (``"G"`` or ``"G."``), with the prefix stripped."""
        prefix = prefix.rstrip(".") + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def generator(self, device: str | torch.device = "cpu", ema: bool = True) -> nn.Module:
        """The generator in eval mode: the moving average ``G_ema`` when stored
        (and ``ema`` is true), else the raw ``G``
        (see :func:`napari_atagan.gan.checkpoint.load_generator`)."""
        self._require_atagan("generator")
        return _family_module(DEFAULT_FAMILY).load_generator(self, device, ema=ema)

    def discriminator(self, device: str | torch.device = "cpu") -> nn.Module:
        """The discriminator in eval mode
        (see :func:`napari_atagan.gan.checkpoint.load_discriminator`)."""
        self._require_atagan("discriminator")
        return _family_module(DEFAULT_FAMILY).load_discriminator(self, device)

    def built_once(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()``, called on the first request for ``key`` and kept with this checkpoint.

        For modules built from the weights for inference only (the weights of a loaded
        checkpoint never change): the slide attention keeps its prepared discriminator
        here, so an archive's worker builds it once, not once a slide
        (:func:`napari_atagan.slides.attention.slide_attention`). The caller must not
        change what it gets back.
        """
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def pattern_model(self, device: str | torch.device = "cpu") -> tuple[nn.Module, str] | None:
        """What names a cell's pattern: ``(model, source)``, or ``None`` without patterns
        (see :func:`napari_atagan.gan.checkpoint.load_pattern_model`)."""
        self._require_atagan("pattern model")
        key = str(torch.device(device))
        if key not in self._pattern_models:  # (in eval mode, used for inference only)
            self._pattern_models[key] = _family_module(DEFAULT_FAMILY).load_pattern_model(
                self, device)
        return self._pattern_models[key]

    def hparams(self, name: str) -> dict | None:
        """The stored constructor arguments of module ``name`` (``None``: not stored)."""
        return self._hparams(name)

    def _hparams(self, name: str) -> dict | None:
        record = (self.metadata.get("modules") or {}).get(name)
        if isinstance(record, dict) and isinstance(record.get("hparams"), dict):
            return record["hparams"]
        return None

def load_checkpoint(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    family: str | None = DEFAULT_FAMILY,
) -> Checkpoint:
    """Open and fully check a checkpoint; tensors are placed on ``map_location``.

    ``family``: the model family expected (default ATA-GAN, see :data:`FAMILIES`);
    ``None`` opens a checkpoint of any family this version knows.

    Raises :class:`CheckpointError` (naming the file) when the file is missing,
    is a folder, is not a safetensors file (pickles and zip archives from
    ``torch.save`` are refused without being opened as such), is truncated or
    corrupt, is not a napari-atagan checkpoint, was written by a newer format,
    belongs to another model family than ``family`` (the message says which and
    how to open it), or holds an invalid training config.
    """
    path = Path(path)
    data = read_file(path)
    config, document = check_bytes(path, data, family)
    tensors = _safetensors_from_bytes(data)  # the bytes are checked: no error left here
    if str(map_location) != "cpu":
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return Checkpoint(path=path, config=config, metadata=document, tensors=tensors)


# ---------------------------------------------------------------------------
# putting weights and optimizer state back
# ---------------------------------------------------------------------------


def load_module_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    what: str,
    path: str | os.PathLike,
) -> None:
    """Load ``state`` strictly into ``module``; mismatches raise :class:`CheckpointError`.

    The message says which keys are missing, unexpected or of the wrong shape
    (a few of each), e.g. when a checkpoint of another architecture is opened.
    """
    expected = module.state_dict()
    problems = _state_mismatch(expected, state)
    if problems:
        raise checkpoint_error(path, f"the {what} weights do not fit the model: {'; '.join(problems)}")
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:400]
        raise checkpoint_error(path, f"the {what} weights could not be loaded: {summary}") from exc


def _state_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> list[str]:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k} (file {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label}: {_first_few(keys)}")
    return problems


def _first_few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_optimizer_state(
    ckpt: Checkpoint, name: str, optimizer: torch.optim.Optimizer
) -> None:
    """Restore optimizer ``name`` (e.g. ``"G"``) saved with :func:`save_checkpoint`.

    The optimizer must be built over the same parameters, in the same order.
    """
    info = (ckpt.metadata.get("optimizers") or {}).get(name)
    if not isinstance(info, dict):
        raise checkpoint_error(ckpt.path, f"has no state for optimizer {name!r}")
    saved_class = info.get("class")
    if saved_class and saved_class != type(optimizer).__name__:
        raise checkpoint_error(
            ckpt.path,
            f"optimizer {name!r} was saved as {saved_class}, cannot load into "
            f"{type(optimizer).__name__}",
        )
    try:
        state = _optimizer_state(ckpt, name, info)
        saved_groups = info["param_groups"]
        if len(saved_groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(saved_groups)} parameter group(s) saved, "
                             f"{len(optimizer.param_groups)} in this optimizer")
        groups = [_restore_group(g, ours)
                  for g, ours in zip(saved_groups, optimizer.param_groups, strict=True)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise checkpoint_error(ckpt.path, f"optimizer {name!r} state does not fit: {exc}") from exc
    _match_layout(optimizer)


def _match_layout(opt: torch.optim.Optimizer) -> None:
    """Give each saved moment the memory layout of its parameter (e.g. channels_last):
    the checkpoint stores contiguous tensors, and fused Adam needs both alike."""
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _optimizer_state(ckpt: Checkpoint, name: str, info: dict) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {
        int(index): dict(numbers) for index, numbers in (info.get("state") or {}).items()
    }
    prefix = f"optim.{name}.state."
    for key, tensor in ckpt.tensors.items():
        if key.startswith(prefix):
            index, _, field = key[len(prefix):].partition(".")
            state.setdefault(int(index), {})[field] = tensor
    return state


# How an update runs (not what it has learned): the resuming run's choice. A run
# saved on a GPU with a captured step (capturable Adam) resumes on a CPU, and a
# run saved without fused Adam resumes with it.
_RUNTIME_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def _restore_group(group: dict, ours: dict) -> dict:
    """A saved parameter group, with this optimizer's runtime options. JSON turned
    tuples (e.g. Adam's betas) into lists; turn them back."""
    restored = {
        key: tuple(value) if isinstance(value, list) and key != "params" else value
        for key, value in group.items()
    }
    restored.update({key: ours[key] for key in _RUNTIME_OPTIONS if key in ours})
    return restored


def export_model(source: str | os.PathLike | Checkpoint, destination: str | os.PathLike) -> Path:
    """Write a small checkpoint for sharing and inference: the averaged generator,
    the discriminator and its pattern probe (where the run has one) with all
    metadata, but no optimizer, RNG or teacher state.

    Synthesis and slide attention work with it; ``train --resume`` does not.
    """
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    modules: dict[str, Any] = {"G_ema": ckpt.generator(ema=True), "D": ckpt.discriminator()}
    if ckpt.has("probe"):  # a few hundred numbers that name the cells' patterns
        probe = _family_module(DEFAULT_FAMILY).load_probe(ckpt)
        modules["probe"] = probe
    metadata = {k: v for k, v in ckpt.metadata.items() if k not in ("modules",)}
    metadata["exported_from"] = ckpt.path.name
    metadata["generator_statistics"] = GENERATOR_STATISTICS  # given by ckpt.generator()
    return save_checkpoint(destination, config=ckpt.config, modules=modules, metadata=metadata)


def with_module(source: str | os.PathLike | Checkpoint, name: str,
                module: nn.Module, *, metadata: Mapping[str, Any] | None = None,
                destination: str | os.PathLike | None = None) -> Path:
    """Write a checkpoint again with module ``name`` added (or replaced) and the
    ``metadata`` keys set; every other tensor and note is kept as it was, so a
    training checkpoint still resumes. Written atomically, to ``destination``
    (default: over the source file, which stays whole until the new one is)."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source, family=None)
    _check_name(name, "module")
    prefix = name + "."
    tensors = {k: v for k, v in ckpt.tensors.items() if not k.startswith(prefix)}
    _add_tensors(tensors, {prefix + k: v for k, v in module.state_dict().items()})
    reserved = _WRITTEN_KEYS.intersection(metadata or {})
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are written by the checkpoint itself")
    document = {**ckpt.metadata, **(metadata or {})}
    document["modules"] = {**(document.get("modules") or {}), name: _module_record(module)}
    path = _with_suffix(Path(destination)) if destination is not None else ckpt.path
    return _write_document(path, tensors, document)
