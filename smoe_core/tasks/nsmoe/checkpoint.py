"""N-SMoE checkpoint files: the trained encoder with everything a training run needs to continue, in one checked
file ([N-SMoE] gives no format; this one is ours).

Layout (format version :data:`VERSION`):

1. the magic line :data:`MAGIC` (``SMoE-NSMoE-checkpoint\\n``);
2. one line of UTF-8 JSON, the header: ``format_version``, ``payload_bytes``, ``sha256`` and a readable summary
   (task, scale, step, total steps, preset, seed, parameter count, smoe version, date);
3. the payload: ``torch.save`` of a dict of tensors and strings, read back with ``torch.load(weights_only=True)``
   (no code is unpickled): ``model`` (the network's ``state_dict``: the encoder's weights; the head and decoder
   have none), ``optimizer`` (Adam's ``state_dict``), ``torch_rng`` (the CPU generator's state) and ``meta``, a
   JSON string with the network and training configurations, the step, the history and the numpy generators'
   states (their 128-bit integers are exact in JSON).

``sha256`` is the digest of the header's other fields (canonical JSON: sorted keys, no spaces) followed by a
newline and the payload, so a changed byte anywhere in the file is found. :func:`load` checks, in order: the file
exists and is at most :data:`MAX_BYTES`; the magic (else "not an N-SMoE checkpoint"); the header parses and the
format version is :data:`VERSION` (else "format version N, this smoe reads VERSION"); the payload's length and
digest (else "corrupted"); the payload unpickles as tensors and its meta parses. Every failure is one
:class:`CheckpointError` (a ValueError) naming the file.

Size: the compact encoder (about 1.1M float32 parameters, :mod:`.encoder`) is 4.4 MB of weights and 8.8 MB of Adam
moments: about 13 MB a file, under :data:`SIZE_BUDGET` (20 MB; the tests check it). Writes are atomic: a
temporary file in the target folder, flushed and fsynced, then renamed over the target.

Shipped checkpoints are **weights only** (:func:`export_weights`, ``smoe nsmoe export``): the same format with the
optimizer and generator states left out (``meta["weights_only"]`` true; about 4.4 MB), so inference loads them and
a training run refuses to resume from them.

Where the shipped checkpoints live: ``smoe_core/data/nsmoe/<task>.ckpt`` (package data), or the folder
``$SMOE_NSMOE_CHECKPOINTS`` (:func:`default_path`).
"""
from __future__ import annotations

import hashlib
import io as bytes_io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...io import PACKAGE_DATA, atomic_write
from ...version import __version__

MAGIC = b"SMoE-NSMoE-checkpoint\n"
VERSION = 1
MAX_BYTES = 256 * 2**20  # refused before reading: far above any compact encoder's file
MAX_HEADER_BYTES = 2**20
SIZE_BUDGET = 20 * 2**20
HEADER_SUMMARY = ("task", "scale", "step", "total_steps", "preset", "seed", "n_parameters")


class CheckpointError(ValueError):
    """A file that is not a readable N-SMoE checkpoint of this format version (the message names it)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the header, the parsed meta and the tensors."""

    path: Path
    header: dict
    meta: dict
    model: dict  # state_dict
    optimizer: dict | None
    torch_rng: torch.Tensor | None

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def default_dir() -> Path:
    """``$SMOE_NSMOE_CHECKPOINTS`` if set, else the package's ``smoe_core/data/nsmoe``."""
    env = os.environ.get("SMOE_NSMOE_CHECKPOINTS")
    return Path(env) if env else PACKAGE_DATA / "nsmoe"


def default_path(task: str) -> Path:
    """Where the shipped checkpoint of ``task`` is (it may be absent)."""
    return default_dir() / f"{task}.ckpt"


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def digest(header_fields: dict, payload: bytes) -> str:
    h = hashlib.sha256(canonical(header_fields))
    h.update(b"\n")
    h.update(payload)
    return h.hexdigest()


def encode(meta: dict, model: dict, optimizer: dict | None = None, torch_rng: torch.Tensor | None = None) -> bytes:
    """The bytes of a checkpoint file (see the module docstring). ``meta`` must be JSON (no NaN)."""
    buf = bytes_io.BytesIO()
    torch.save({"model": model, "optimizer": optimizer, "torch_rng": torch_rng,
                "meta": json.dumps(meta, sort_keys=True, allow_nan=False)}, buf)
    payload = buf.getvalue()
    fields = {k: meta.get(k) for k in HEADER_SUMMARY}
    fields.update(format="smoe N-SMoE checkpoint", format_version=VERSION, payload_bytes=len(payload),
                  smoe_version=__version__, written=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    header = dict(fields, sha256=digest(fields, payload))
    return MAGIC + canonical(header) + b"\n" + payload


def save(path, meta: dict, model: dict, optimizer: dict | None = None,
         torch_rng: torch.Tensor | None = None) -> Path:
    """Writes a checkpoint atomically; returns its path."""
    data = encode(meta, model, optimizer, torch_rng)
    if len(data) > MAX_BYTES:
        raise ValueError(f"a checkpoint of {len(data)} bytes is more than the format's bound of {MAX_BYTES}")
    return atomic_write(path, data)


def load(path) -> Checkpoint:
    """Reads and checks a checkpoint (module docstring); one :class:`CheckpointError` for any bad file,
    FileNotFoundError for a missing one."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not an N-SMoE checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise CheckpointError(f"{path} is not an N-SMoE checkpoint ({size} bytes, more than {MAX_BYTES})")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise CheckpointError(f"{path} is not an N-SMoE checkpoint (no {MAGIC.strip().decode()} header)")
        line = f.readline(MAX_HEADER_BYTES + 1)
        payload = f.read()
    try:
        if not line.endswith(b"\n"):
            raise ValueError("no end of header")
        header = json.loads(line.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
        version = header["format_version"]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is a corrupted N-SMoE checkpoint (unreadable header: {exc})") from None
    if version != VERSION:
        raise CheckpointError(f"{path} is an N-SMoE checkpoint of format version {version}; this smoe "
                              f"({__version__}) reads version {VERSION}")
    fields = {k: v for k, v in header.items() if k != "sha256"}
    if header.get("payload_bytes") != len(payload) or header.get("sha256") != digest(fields, payload):
        raise CheckpointError(f"{path} is a corrupted N-SMoE checkpoint (sha256 mismatch: the file was changed or "
                              "truncated after it was written)")
    try:
        state = torch.load(bytes_io.BytesIO(payload), map_location="cpu", weights_only=True)
        meta = json.loads(state["meta"])
        model = state["model"]
        if not isinstance(model, dict) or not isinstance(meta, dict) or "step" not in meta or "task" not in meta:
            raise ValueError("missing fields")
    except Exception as exc:  # noqa: BLE001 - a payload that matches its digest but is not ours
        raise CheckpointError(f"{path} is not a readable N-SMoE checkpoint ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    return Checkpoint(path, header, meta, model, state.get("optimizer"), state.get("torch_rng"))


def export_weights(src, dst) -> Path:
    """Writes ``dst``: the checkpoint ``src`` without Adam's moments and the generators' states (inference only;
    ``meta["weights_only"] = True``, a resume refuses it). Refuses an untrained (step 0) or a weights-only source
    and ``dst`` equal to ``src``."""
    state = load(src)
    dst = Path(dst)
    if dst.exists() and dst.resolve() == state.path.resolve():
        raise ValueError(f"the export must not overwrite its source {state.path}")
    if state.step < 1:
        raise CheckpointError(f"{state.path} holds untrained weights (step 0): nothing to export")
    if state.meta.get("weights_only"):
        raise CheckpointError(f"{state.path} is already a weights-only checkpoint")
    meta = dict(state.meta, weights_only=True, exported_from=state.header.get("sha256"))
    meta.pop("rng", None)
    return save(dst, meta, state.model)
