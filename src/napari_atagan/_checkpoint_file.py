"""The checkpoint file itself, read and checked without torch.

A checkpoint (:mod:`napari_atagan.checkpoint`) is one safetensors file whose
header metadata holds a JSON document (format version, model family, config,
class names, a checksum of the tensor data, ...). Everything that can be wrong
with such a file shows in its bytes: missing, a folder, a pickle or zip archive
in disguise, truncated or corrupt, not ours, written by a newer format, of
another model family, an invalid config, or tensor data that does not match its
checksum. This module finds all of it from the bytes alone, without torch, so a command that only hands the file on (the archive's main
process, whose worker processes each open the weights with torch) checks it in
milliseconds instead of first importing torch for seconds.
:func:`napari_atagan.checkpoint.load_checkpoint` runs the same checks and then
turns the tensors into torch tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "DEFAULT_FAMILY", "FAMILIES", "FORMAT_VERSION", "METADATA_KEY",
           "check_checkpoint", "checkpoint_error"]

FORMAT_VERSION = 1
METADATA_KEY = "napari_atagan"
SUFFIX = ".safetensors"

DEFAULT_FAMILY = "atagan"
"""The family of a checkpoint whose metadata names none (all files written before
families existed are ATA-GAN checkpoints)."""


@dataclass(frozen=True)
class _Family:
    """What a model family's checkpoints are called, hold and are opened with."""

    title: str
    config_class: str  # "module:Class", imported when a file of the family is opened
    opener: str
    networks: str = ""  # the module that rebuilds the family's networks from a file
    commands: str = ""  # the command-line tools that use the family's checkpoints

    def how_to_open(self) -> str:
        """``open it with ...``: the library function, and the commands that use it."""
        commands = f" (on the command line: {self.commands})" if self.commands else ""
        return f"open it with {self.opener}{commands}"


FAMILIES: dict[str, _Family] = {
    "atagan": _Family("an ATA-GAN checkpoint", "napari_atagan.gan.config:TrainConfig",
                      "napari_atagan.checkpoint.load_checkpoint", "napari_atagan.gan.checkpoint",
                      "napari-atagan attention, synth or evaluate"),
    "translate": _Family("an attention-guided translation (UAG-GAN) checkpoint",
                         "napari_atagan.translate.config:TranslateConfig",
                         "napari_atagan.translate.load_translator",
                         commands="napari-atagan translate apply"),
}
"""Every model family this version reads, by the name stored as ``family``."""

_PICKLE_STARTS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # pickle protocols 2-5
_ZIP_START = b"PK\x03\x04"  # torch.save archives are zip files

TORCH_DTYPE_NAMES = {
    "BOOL": "torch.bool", "U8": "torch.uint8", "I8": "torch.int8", "I16": "torch.int16",
    "U16": "torch.uint16", "F16": "torch.float16", "BF16": "torch.bfloat16",
    "I32": "torch.int32", "U32": "torch.uint32", "F32": "torch.float32",
    "F64": "torch.float64", "I64": "torch.int64", "U64": "torch.uint64",
    "F8_E4M3": "torch.float8_e4m3fn", "F8_E5M2": "torch.float8_e5m2",
}
"""How torch names each safetensors dtype: the checksum hashes the torch name, as the
writer saw its tensors."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not ours, or does not fit the models."""


def checkpoint_error(path: Path | str, problem: str) -> CheckpointError:
    """The error for ``problem`` with the file at ``path``, naming the file."""
    return CheckpointError(f"checkpoint {str(path)!r}: {problem}")


def check_checkpoint(path: str | os.PathLike, *, family: str | None = DEFAULT_FAMILY) -> Any:
    """Check a checkpoint file as :func:`~napari_atagan.checkpoint.load_checkpoint`
    does, without torch; returns its config.

    Raises :class:`CheckpointError` (naming the file) for everything
    ``load_checkpoint`` refuses. ``family``: the model family expected;
    ``None`` accepts any family this version knows.
    """
    path = Path(path)
    return check_bytes(path, read_file(path), family)[0]


def check_bytes(path: Path, data: bytes, family: str | None) -> tuple[Any, dict[str, Any]]:
    """Every check of a checkpoint's bytes, in the order a user meets the problems;
    returns the config and the metadata document."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    records = _tensor_records(path, data)
    document = _parse_metadata(path, data)
    _check_format_version(path, document)
    found = _check_family(path, document, family)
    config = _parse_config(path, document, found)
    _check_class_names(path, document)
    _verify_checksum(path, document, records)
    return config, document


def read_file(path: Path) -> bytes:
    if not path.exists():
        raise checkpoint_error(path, "no such file")
    if path.is_dir():
        raise checkpoint_error(path, f"is a folder, not a {SUFFIX} file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise checkpoint_error(path, f"cannot be read: {exc}") from exc


def config_class(family: str) -> type:
    module, _, name = FAMILIES[family].config_class.partition(":")
    return getattr(importlib.import_module(module), name)


def _looks_like_safetensors(data: bytes) -> bool:
    """A safetensors file is an 8-byte header length, then a JSON header that opens
    with ``{``. The length alone can begin with pickle's bytes (a header of 640,
    896, 1152 or 1408 bytes, modulo 65536, starts ``80 02`` to ``80 05``)."""
    if len(data) < 9 or data[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(data[:8], "little") <= len(data) - 8


def _tensor_records(path: Path, data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The file's tensors as safetensors reads them (name, dtype, shape, raw bytes),
    after refusing a pickle or a zip archive without opening it as one."""
    from safetensors import deserialize

    if not _looks_like_safetensors(data) and (
            data[:2] in _PICKLE_STARTS or data[:4] == _ZIP_START):
        raise checkpoint_error(
            path,
            "looks like a pickle or torch.save archive; napari-atagan only opens "
            f"{SUFFIX} checkpoints, which cannot run code",
        )
    try:
        return deserialize(data)
    except Exception as exc:  # SafetensorError is not importable in a stable place
        raise checkpoint_error(path, f"is not a valid {SUFFIX} file (truncated or corrupt?): {exc}") from exc


def _parse_metadata(path: Path, data: bytes) -> dict[str, Any]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])  # already validated by safetensors
    text = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if text is None:
        raise checkpoint_error(path, f"is a {SUFFIX} file but not a napari-atagan checkpoint "
                     f"(no {METADATA_KEY!r} metadata)")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise checkpoint_error(path, f"has corrupt metadata (invalid JSON: {exc})") from exc
    if not isinstance(document, dict):
        raise checkpoint_error(path, "has corrupt metadata (not a JSON object)")
    return document


def _check_format_version(path: Path, document: dict) -> None:
    from . import __version__

    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise checkpoint_error(path, f"has an unknown checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise checkpoint_error(
            path,
            f"was written in checkpoint format {version}, newer than this napari-atagan "
            f"({__version__}) reads (up to {FORMAT_VERSION}); update napari-atagan",
        )


def _check_family(path: Path, document: dict, expected: str | None) -> str:
    """The file's model family; refuse one that is unknown or not ``expected``."""
    from . import __version__

    found = document.get("family", DEFAULT_FAMILY)
    if not isinstance(found, str) or found not in FAMILIES:
        raise checkpoint_error(path, f"holds a model of family {found!r}, which this napari-atagan "
                     f"({__version__}) does not know (known: {', '.join(FAMILIES)}); "
                     "update napari-atagan")
    if expected is not None and found != expected:
        raise checkpoint_error(path, f"is {FAMILIES[found].title}, not {FAMILIES[expected].title}: "
                     f"{FAMILIES[found].how_to_open()}")
    return found


def _parse_config(path: Path, document: dict, family: str = DEFAULT_FAMILY) -> Any:
    raw = document.get("config")
    if not isinstance(raw, dict):
        raise checkpoint_error(path, "has no training config in its metadata")
    try:
        return config_class(family).from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise checkpoint_error(path, f"has an invalid training config: {exc}") from exc


def _check_class_names(path: Path, document: dict) -> None:
    names = document.get("class_names", [])
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise checkpoint_error(path, f"has invalid class_names (expected a list of strings): {names!r}")


def _verify_checksum(path: Path, document: dict,
                     records: list[tuple[str, dict[str, Any]]]) -> None:
    """The stored SHA-256 against the file's own bytes: keys, dtypes (as torch names
    them), shapes and data of all tensors in key order, as the writer hashed them."""
    stored = document.get("checksum")
    if not isinstance(stored, dict) or "sha256" not in stored:
        return  # written without a checksum: nothing to compare
    digest = hashlib.sha256()
    for key, record in sorted(records, key=lambda r: r[0]):
        dtype = TORCH_DTYPE_NAMES.get(record["dtype"])
        if dtype is None:
            raise checkpoint_error(path, f"holds tensor {key!r} of type {record['dtype']}, "
                                         "which no napari-atagan checkpoint holds")
        digest.update(f"{key}|{dtype}|{tuple(record['shape'])}\n".encode())
        digest.update(record["data"])
    if digest.hexdigest() != stored["sha256"]:
        raise checkpoint_error(path, "is corrupt: the tensor data does not match its checksum")
