"""Saved identities (`.bvid`): one safetensors file that keeps a character for later shots.

Why this format:
- safetensors holds raw tensor bytes and a JSON header, so loading never runs code (no pickle,
  no `torch.load`); a file from a stranger is as safe to open as a PNG.
- Everything bachvid needs to refuse a wrong reuse sits next to the tensors, in the header's
  metadata under the key "bachvid", as one JSON string: the format version, when it was made,
  and the caller's metadata (model name, model config hash, BachVid config, prompt, seed,
  frames, height, width, steps, guidance, dtype, ...).
- A content hash (sha256 over the metadata and every tensor's name, dtype, shape and bytes)
  is stored in that metadata too, so a truncated, corrupted or edited file is refused instead
  of silently giving a different character.
- Files are written atomically (temporary file in the same folder, then os.replace), so an
  interrupted save never leaves a half-file that a later run would take for a good one.

Layout of the "bachvid" JSON (format 1): the caller's metadata keys, plus
`format_version` (int), `created` (UTC, ISO 8601, unless the caller gives one) and
`content_hash` ("sha256:<hex>"). `format_version` and `content_hash` are reserved.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors_bytes
from safetensors.torch import save as _save_safetensors_bytes
from safetensors.torch import save_file

from bachvid.io.outputs import write_atomic

FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)  # the format versions this bachvid loads
SUFFIX = ".bvid"
METADATA_KEY = "bachvid"
RESERVED_KEYS = ("format_version", "content_hash")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit: a larger length field is not a header

# safetensors dtype tags -> torch dtype names (for describe; loading uses safetensors itself)
_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}


class IdentityFileError(ValueError):
    """A saved identity that cannot be written or used; the message says what, where, and what to do."""


# ---------------------------------------------------------------------------------------------
# Hashes


def _canonical_json(value) -> str:
    """One text per value: sorted keys, no spaces, ASCII (lone surrogates survive), no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def model_config_hash(config: Mapping) -> str:
    """16 hex digits of sha256 over the model config's canonical JSON.

    Top-level keys starting with "_" are left out: diffusers stores its version and the load
    path there, which change without changing the model."""
    kept = {key: value for key, value in dict(config).items() if not str(key).startswith("_")}
    try:
        text = _canonical_json(_json_normalised(kept, "model config"))
    except IdentityFileError as error:
        raise IdentityFileError(f"cannot hash the model config: {error}") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _tensor_bytes(tensor: torch.Tensor):
    """The tensor's raw bytes as a buffer (no copy for contiguous CPU tensors)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def _content_hash(metadata: Mapping, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the metadata (without content_hash) and every tensor, length-prefixed so
    that no two different contents give the same byte stream."""
    digest = hashlib.sha256(b"bachvid-identity\0")

    def chunk(data) -> None:
        data = memoryview(data).cast("B")
        digest.update(struct.pack("<Q", data.nbytes))
        digest.update(data)

    chunk(_canonical_json({k: v for k, v in metadata.items() if k != "content_hash"}).encode("ascii"))
    for name in sorted(tensors):
        tensor = tensors[name]
        chunk(_canonical_json([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
              .encode("ascii"))
        chunk(_tensor_bytes(tensor))
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Metadata checks


def _json_normalised(value, where: str, _depth: int = 0):
    """`value` as plain JSON types (tuples become lists), or IdentityFileError naming the field.

    Refuses what JSON cannot hold faithfully: NaN/inf, non-string keys, other objects."""
    if _depth > 100:
        raise IdentityFileError(f"{where} is nested more than 100 levels deep (a cycle?)")
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise IdentityFileError(f"{where} is {value}; JSON cannot hold NaN or infinity")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise IdentityFileError(f"{where} has the key {key!r}, which is not a string; JSON keys are text")
            out[str(key)] = _json_normalised(item, f"{where}.{key}", _depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_normalised(item, f"{where}[{i}]", _depth + 1) for i, item in enumerate(value)]
    raise IdentityFileError(f"{where} is a {type(value).__module__}.{type(value).__qualname__} ({value!r:.60}), "
                            f"which JSON cannot hold; pass text, numbers, lists or dicts (e.g. str(dtype))")


def _same(a, b) -> bool:
    """Equal as JSON values: 6 == 6.0, but True != 1 and [1] != {"0": 1}."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


_MISSING = object()


def _show(value) -> str:
    if value is _MISSING:
        return "nothing"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(name: str, in_file, in_run) -> list[str]:
    """One line per differing field; dicts (e.g. the BachVid config) are compared key by key."""
    if isinstance(in_file, dict) and isinstance(in_run, dict):
        lines = []
        for key in sorted(in_file.keys() | in_run.keys()):
            lines += _differences(f"{name}.{key}", in_file.get(key, _MISSING), in_run.get(key, _MISSING))
        return lines
    if in_file is not _MISSING and in_run is not _MISSING and _same(in_file, in_run):
        return []
    return [f"{name}: file has {_show(in_file)}, this run has {_show(in_run)}"]


# ---------------------------------------------------------------------------------------------
# Saving


@lru_cache(maxsize=None)
def _storable(dtype: torch.dtype) -> bool:
    """Whether this safetensors both writes and reads `dtype` (some versions write float8_e8m0fnu
    but cannot read it back: such a file would save fine and never load)."""
    try:
        return _load_safetensors_bytes(_save_safetensors_bytes({"x": torch.empty(0, dtype=dtype)}))["x"].dtype == dtype
    except Exception:
        return False


def _cpu_copies(tensors: Mapping, path: Path) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: safetensors needs contiguous, unshared storage, and the caller's
    tensors must not change under the hash."""
    if not isinstance(tensors, Mapping):
        raise IdentityFileError(f"cannot save {path}: tensors must be a dict of name -> tensor, "
                                f"not {type(tensors).__name__}")
    out = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise IdentityFileError(f"cannot save {path}: tensor name {name!r} is not allowed "
                                    f"(names are non-empty text, and '__metadata__' is reserved)")
        if not isinstance(tensor, torch.Tensor):
            raise IdentityFileError(f"cannot save {path}: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            raise IdentityFileError(f"cannot save {path}: tensor {name!r} has no plain data "
                                    f"(layout {tensor.layout}, device {tensor.device}); pass a dense tensor")
        if not _storable(tensor.dtype):
            raise IdentityFileError(f"cannot save {path}: tensor {name!r} has dtype {tensor.dtype}, "
                                    f"which safetensors cannot store and read back; convert it first")
        out[name] = tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    return out


def save_identity(path, tensors: Mapping[str, torch.Tensor], metadata: Mapping) -> Path:
    """Write `tensors` and `metadata` to `path` (one safetensors file, atomically) and return it.

    The caller's metadata must be JSON (no NaN/inf); `format_version` and `content_hash` are
    added here, and `created` (UTC) unless given."""
    path = Path(path)
    if path.is_dir():
        raise IdentityFileError(f"cannot save the identity to {path}: it is a folder; give a file name "
                                f"such as {path / ('character' + SUFFIX)}")
    if not isinstance(metadata, Mapping):
        raise IdentityFileError(f"cannot save {path}: metadata must be a dict, not {type(metadata).__name__}")
    reserved = [key for key in RESERVED_KEYS if key in metadata]
    if reserved:
        raise IdentityFileError(f"cannot save {path}: metadata key(s) {', '.join(reserved)} are set by "
                                f"save_identity; leave them out")
    try:
        meta = _json_normalised(metadata, "metadata")
    except IdentityFileError as error:
        raise IdentityFileError(f"cannot save {path}: {error}") from None
    if not isinstance(meta.get("created", ""), str):
        raise IdentityFileError(f"cannot save {path}: metadata.created must be text (an ISO 8601 time)")
    meta = {"format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **meta}
    cpu = _cpu_copies(tensors, path)
    meta["content_hash"] = _content_hash(meta, cpu)
    header = {METADATA_KEY: _canonical_json(meta)}
    try:
        return write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata=header))
    except (SafetensorError, OSError) as error:
        raise IdentityFileError(f"could not write the identity file {path}: {error}") from error


# ---------------------------------------------------------------------------------------------
# Reading


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _damaged(path: Path, what: str) -> IdentityFileError:
    return IdentityFileError(f"{path} is not a usable saved identity: {what}. It is damaged or not a "
                             f"{SUFFIX} file; save the identity again (bachvid identity save).")


def _read_header(path: Path, start: bytes, file_size: int) -> tuple[dict, dict, int]:
    """(tensor entries, bachvid metadata, header length) from the file's first bytes.

    `start` must hold at least the 8-byte length and the header when the file is whole. Checks
    that the file is exactly as long as the header says, so a cut at any byte is caught here."""
    if file_size < 8:
        raise _damaged(path, f"it is only {file_size} bytes long (truncated, or not a safetensors file)")
    (length,) = struct.unpack("<Q", start[:8])
    if length > MAX_HEADER_BYTES and (start[:2] == b"PK" or start[:1] == b"\x80"):
        raise IdentityFileError(f"{path} is a pickle or zip file (as torch.save writes), not a saved identity. "
                                f"bachvid never unpickles files, since that can run code; save the identity "
                                f"with `bachvid identity save`.")
    if length > MAX_HEADER_BYTES:
        raise _damaged(path, "it does not start with a safetensors header")
    if 8 + length > file_size:
        raise _damaged(path, f"it is truncated (its header needs {8 + length} bytes, the file has {file_size})")
    try:
        header = json.loads(bytes(start[8:8 + length]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError):
        raise _damaged(path, "its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its safetensors header is not a JSON object")
    raw_meta = header.pop("__metadata__", None)
    data_end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str)
                or not isinstance(entry.get("shape"), list)
                or not all(type(n) is int and n >= 0 for n in entry["shape"])
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(n) is int for n in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise _damaged(path, f"the header entry for tensor {name!r} is malformed")
        data_end = max(data_end, offsets[1])
    have = file_size - 8 - length
    if have < data_end:
        raise _damaged(path, f"it is truncated (its tensors need {data_end} bytes of data, the file has {have})")
    if have > data_end:
        raise _damaged(path, f"it has {have - data_end} unexpected bytes after its tensor data")
    if not isinstance(raw_meta, dict) or METADATA_KEY not in raw_meta:
        raise IdentityFileError(f"{path} is a safetensors file but not a saved bachvid identity (it has no "
                                f"'{METADATA_KEY}' metadata). Make one with `bachvid identity save STORY --out "
                                f"{path.with_suffix(SUFFIX).name}`.")
    try:
        meta = json.loads(raw_meta[METADATA_KEY], object_pairs_hook=_no_duplicates)
    except (TypeError, ValueError):
        raise _damaged(path, f"its '{METADATA_KEY}' metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"its '{METADATA_KEY}' metadata is not a JSON object")
    return header, meta, length


def _check_version(path: Path, meta: dict) -> None:
    version = meta.get("format_version")
    if type(version) is not int:
        raise _damaged(path, f"its metadata has no valid format_version (found {_show(version)})")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        advice = ("it was saved by a newer bachvid; update bachvid to use it" if version > max(READABLE_VERSIONS)
                  else "save the identity again with this bachvid")
        raise IdentityFileError(f"{path} is a saved identity in format version {version}; this bachvid reads "
                                f"format version {readable} only: {advice}.")


def _open_bytes(path: Path, size: int | None = None) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read() if size is None else handle.read(size)
    except FileNotFoundError:
        raise IdentityFileError(f"no saved identity at {path}: the file does not exist. Check the path, or make "
                                f"one with `bachvid identity save STORY --out {path}`.") from None
    except IsADirectoryError:
        raise IdentityFileError(f"{path} is a folder, not a saved identity file ({SUFFIX}).") from None
    except OSError as error:
        raise IdentityFileError(f"cannot read the saved identity {path}: {error.strerror or error}") from None


def load_identity(path, expect: Mapping | None = None, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) from a file written by save_identity, after every check passes.

    Checks, in order: the file is a whole safetensors file with bachvid metadata, its format
    version is one this bachvid reads, its content hash matches (nothing changed since it was
    saved), and each key of `expect` equals the file's metadata (as JSON values; dicts field by
    field). All mismatches are reported together. Tensors go to `device` only after the checks."""
    path = Path(path)
    data = _open_bytes(path)  # read once; the header and the tensors both come from these bytes
    _, meta, _ = _read_header(path, data, len(data))
    _check_version(path, meta)
    try:
        tensors = _load_safetensors_bytes(data)
    except Exception as error:  # SafetensorError, or a dtype this torch lacks
        raise _damaged(path, f"safetensors cannot read its tensors ({error})") from None
    del data
    stored = meta.get("content_hash")
    if not isinstance(stored, str) or _content_hash(meta, tensors) != stored:
        raise IdentityFileError(f"{path}: the file was changed after it was saved; its content hash does not match its "
                                f"tensors and metadata (the file is corrupted or was edited). Save the identity "
                                f"again; bachvid will not use a changed identity.")
    if expect:
        lines = []
        for key, value in expect.items():
            try:
                wanted = _json_normalised(value, f"expect[{key!r}]")
            except IdentityFileError as error:
                raise IdentityFileError(f"cannot compare {path} with this run: {error}") from None
            lines += _differences(str(key), meta.get(key, _MISSING), wanted)
        if lines:
            raise IdentityFileError(
                f"{path} was saved for different settings than this run ({len(lines)} differ):\n"
                + "\n".join(f"  - {line}" for line in lines)
                + "\nRun with the settings it was saved with, or save the identity again with these.")
    if torch.device(device).type != "cpu":
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return tensors, meta


def describe(path, verify: bool = False) -> dict:
    """What a saved identity holds, reading only its header (unless verify=True).

    Returns {path, file_size, format_version, readable, verified, metadata, tensors:
    {name: {dtype, shape, bytes}}, tensor_bytes}. A file in a format this bachvid cannot read
    is still described (readable False); a truncated or non-identity file is refused. With
    verify=True the whole file is loaded and its content hash checked."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError:
        file_size = None
    start = _open_bytes(path, 8)
    if len(start) == 8:
        (length,) = struct.unpack("<Q", start)
        if length <= MAX_HEADER_BYTES:
            start = _open_bytes(path, 8 + length)
    header, meta, _ = _read_header(path, start, file_size if file_size is not None else len(start))
    version = meta.get("format_version")
    readable = type(version) is int and version in READABLE_VERSIONS
    if verify:
        _, meta = load_identity(path)
    tensors = {name: {"dtype": _DTYPE_NAMES.get(entry["dtype"], entry["dtype"]), "shape": list(entry["shape"]),
                      "bytes": entry["data_offsets"][1] - entry["data_offsets"][0]}
               for name, entry in sorted(header.items())}
    return {"path": str(path), "file_size": file_size, "format_version": version, "readable": readable,
            "verified": verify, "metadata": meta, "tensors": tensors,
            "tensor_bytes": sum(entry["bytes"] for entry in tensors.values())}
