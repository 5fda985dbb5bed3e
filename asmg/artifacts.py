"""Model artifacts and trainer checkpoints: safetensors + a JSON manifest with sha256 checksums.

A bundle is a folder (local path, ``s3://`` URI, or another pyarrow filesystem URI: asmg/objectstore.py)
holding ``tensors.safetensors`` and ``manifest.json``; the manifest records the tensor file's sha256 and the
reader refuses a mismatch. Records on Kafka carry the manifest's own sha256, so a reader checks the whole
chain. The manifest is written last: on a store without rename a bundle exists once its manifest does. No
pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyarrow import fs
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from asmg.model import Params
from asmg.objectstore import StoreConfigError, make_dirs, open_uri, write_atomic

FORMAT = 1
WRITE_FAULT_ENV = "ASMG_WRITE_FAULT"  # tests only: SIGKILL half way through writing a file whose path ends so
TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """A bundle is missing, incomplete or does not match its checksum."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _filesystem(uri: str) -> tuple[fs.FileSystem, str]:
    try:
        return open_uri(uri)
    except StoreConfigError as exc:
        raise ArtifactError(str(exc)) from None


def _write(filesystem: fs.FileSystem, path: str, data: bytes) -> None:
    """Local: write beside, then move into place; object store: one PUT, visible once complete. Either way a
    reader never sees half a file."""
    if (fault := os.environ.get(WRITE_FAULT_ENV)) and path.endswith(fault):
        with filesystem.open_output_stream(path + ".tmp") as stream:
            _die_half_written(stream, data, path)
    write_atomic(filesystem, path, data, tmp_suffix=".tmp")


def _die_half_written(stream: Any, data: bytes, path: str) -> None:
    """Fault injection (tests only): half the bytes reach the file, then the process dies (SIGKILL)."""
    stream.write(data[: len(data) // 2])
    stream.flush()
    os.write(2, f"fault injection: killed while writing {path}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def _read(filesystem: fs.FileSystem, path: str) -> bytes:
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc


def save_bundle(uri: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write a bundle; returns the manifest's sha256 (what a Kafka record should carry)."""
    filesystem, root = _filesystem(uri)
    make_dirs(filesystem, root)
    blob = save_tensors(_unshared(tensors))
    manifest = {"format": FORMAT, **meta, "files": {TENSORS: {"sha256": sha256_hex(blob), "bytes": len(blob)}}}
    text = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _write(filesystem, f"{root}/{TENSORS}", blob)
    _write(filesystem, f"{root}/{MANIFEST}", text)
    return sha256_hex(text)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (a window model that is also the base): copy those."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def load_bundle(uri: str, manifest_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    filesystem, root = _filesystem(uri)
    text = _read(filesystem, f"{root}/{MANIFEST}")
    if manifest_sha256 is not None and sha256_hex(text) != manifest_sha256:
        raise ArtifactError(f"{uri}: manifest sha256 {sha256_hex(text)} != expected {manifest_sha256}")
    manifest = json.loads(text)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{uri}: unsupported bundle format {manifest.get('format')!r}")
    blob = _read(filesystem, f"{root}/{TENSORS}")
    expected = manifest["files"][TENSORS]["sha256"]
    if sha256_hex(blob) != expected:
        raise ArtifactError(f"{uri}: {TENSORS} sha256 {sha256_hex(blob)} != manifest's {expected}")
    return load_tensors(blob), manifest


def bundle_exists(uri: str) -> bool:
    filesystem, root = _filesystem(uri)
    return filesystem.get_file_info(f"{root}/{MANIFEST}").type == fs.FileType.File


@dataclass(frozen=True)
class ModelArtifact:
    """What a scorer needs: the served model, the IU shadow, and the id -> row vocabularies."""

    version: int
    period: int
    method: str
    serving: Params
    shadow: Params
    users: np.ndarray
    items: np.ndarray
    categories: np.ndarray
    item_categories: np.ndarray
    meta: dict[str, Any]


def save_model(uri: str, *, version: int, period: int, method: str, serving: Params, shadow: Params,
               vocabs, config: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    tensors = {f"serving/{k}": v for k, v in serving.items()}
    tensors.update({f"shadow/{k}": v for k, v in shadow.items()})
    tensors["vocab/users"] = torch.from_numpy(vocabs.users.ids.copy())
    tensors["vocab/items"] = torch.from_numpy(vocabs.items.ids.copy())
    tensors["vocab/categories"] = torch.from_numpy(vocabs.categories.ids.copy())
    tensors["vocab/item_categories"] = torch.from_numpy(vocabs.item_categories.table.copy())
    meta = {"kind": "model", "version": version, "period": period, "method": method, "config": config,
            "metrics": metrics, "vocab_sizes": vocabs.sizes()}
    return save_bundle(uri, tensors, meta)


def load_model(uri: str, manifest_sha256: str | None = None) -> ModelArtifact:
    tensors, meta = load_bundle(uri, manifest_sha256)
    if meta.get("kind") != "model":
        raise ArtifactError(f"{uri}: not a model bundle (kind={meta.get('kind')!r})")

    def group(prefix: str) -> Params:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return ModelArtifact(version=meta["version"], period=meta["period"], method=meta["method"],
                         serving=group("serving/"), shadow=group("shadow/"),
                         users=tensors["vocab/users"].numpy(), items=tensors["vocab/items"].numpy(),
                         categories=tensors["vocab/categories"].numpy(),
                         item_categories=tensors["vocab/item_categories"].numpy(), meta=meta)
