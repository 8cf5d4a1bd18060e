"""A trained model version on disk (manifest + .npy arrays) and in memory (catalog, users, parts).

Artifacts never contain pickles: every array is saved with ``allow_pickle=False`` and loaded the
same way, so loading a model can never execute code. Numeric arrays are memory-mapped, so
several workers on one machine share one copy of the item factors in the page cache.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .types import ModelPart

FORMAT = 1
MANIFEST = "manifest.json"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


class ArtifactError(RuntimeError):
    """An artifact directory is missing, incomplete or of an unknown format."""


@dataclass(frozen=True)
class Catalog:
    """Items by dense index 0..N-1: external ids, titles, primary category, category names.

    ``categories[i]`` is the index into ``category_names`` of item i's primary category, or -1.
    ``category_sets`` (CSR: ``cat_indptr``/``cat_indices``) holds every category of an item.
    """

    item_ids: np.ndarray
    titles: np.ndarray
    categories: np.ndarray
    category_names: tuple[str, ...]
    cat_indptr: np.ndarray
    cat_indices: np.ndarray
    index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    category_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    #: strings the serving path derives from the catalog, computed once (see :meth:`id_list`)
    memo: dict[Any, Any] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index.update({str(v): i for i, v in enumerate(self.item_ids.tolist())})
        if not self.category_index:
            self.category_index.update({c: i for i, c in enumerate(self.category_names)})

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Return the indices of ``ids`` (int64), -1 for ids not in the catalog."""
        get = self.index.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def ids(self, indices: np.ndarray) -> list[str]:
        """Return the external ids of item ``indices`` (the inverse of :meth:`lookup`)."""
        return [str(v) for v in self.item_ids[np.asarray(indices, dtype=np.int64)].tolist()]

    def id_list(self) -> list[str]:
        """Every external id as a Python string, by index (built once)."""
        ids = self.memo.get("ids")
        if ids is None:
            ids = self.memo["ids"] = [str(v) for v in self.item_ids.tolist()]
        return ids

    def title(self, idx: int) -> str:
        t = str(self.titles[idx])
        return t or str(self.item_ids[idx])

    def category_name(self, cat: int) -> str:
        return self.category_names[cat] if 0 <= cat < len(self.category_names) else "uncategorized"

    def items_in_categories(self, names: Sequence[str]) -> np.ndarray:
        """Boolean mask over items having any of the named categories (unknown names ignored)."""
        wanted = np.array([self.category_index[n] for n in names if n in self.category_index])
        mask = np.zeros(len(self), dtype=bool)
        if wanted.size:
            hit = np.isin(self.cat_indices, wanted)
            rows = np.repeat(np.arange(len(self)), np.diff(self.cat_indptr))
            mask[rows[hit]] = True
        return mask


@dataclass(frozen=True)
class UserTable:
    """Users known at training time and their histories (item indices, most recent first)."""

    user_ids: np.ndarray
    history_indptr: np.ndarray
    history_items: np.ndarray
    index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index.update({str(v): i for i, v in enumerate(self.user_ids.tolist())})

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def row(self, user_id: str | None) -> int:
        return -1 if user_id is None else self.index.get(user_id, -1)

    def history(self, row: int) -> np.ndarray:
        if row < 0:
            return np.empty(0, dtype=np.int64)
        lo, hi = self.history_indptr[row], self.history_indptr[row + 1]
        return np.asarray(self.history_items[lo:hi], dtype=np.int64)


@dataclass(frozen=True)
class Factors:
    """Latent factors of a factor model: ``users[row]`` and ``items[index]``, float32, one
    row per user of the model's user table and per item of its catalog."""

    users: np.ndarray
    items: np.ndarray


@dataclass(frozen=True)
class Neighbours:
    """Item-to-item neighbours in CSR form: the neighbours of item ``i`` are
    ``indices[indptr[i]:indptr[i + 1]]`` with similarities ``weights[...]`` (same slice)."""

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    def of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(neighbour indices, similarities)`` of item index ``item``."""
        lo, hi = int(self.indptr[item]), int(self.indptr[item + 1])
        return self.indices[lo:hi], self.weights[lo:hi]


@dataclass(frozen=True)
class Model:
    """One loaded model version: catalog, users and each trained part's arrays.

    The read API for plugins: ``catalog`` (items by dense index; ``catalog.lookup(ids)`` and
    ``catalog.ids(indices)`` map external ids to indices and back), ``users`` (the user table:
    ``users.row(user_id)``, ``users.history(row)``), ``part(name)`` (a trained part's arrays),
    ``params(name)``, and the typed views :meth:`factors` and :meth:`neighbours`.
    """

    version: str
    manifest: Mapping[str, Any]
    catalog: Catalog
    users: UserTable
    parts: Mapping[str, Mapping[str, np.ndarray]]
    path: Path | None = None

    def part(self, name: str) -> Mapping[str, np.ndarray] | None:
        return self.parts.get(name)

    def params(self, name: str) -> Mapping[str, Any]:
        return self.manifest.get("parts", {}).get(name, {}).get("params", {})

    def factors(self, name: str = "als") -> Factors | None:
        """The user and item factors of part ``name`` (arrays ``user_factors`` and
        ``item_factors``), or None when the model has no such part."""
        part = self.part(name)
        if part is None or "user_factors" not in part or "item_factors" not in part:
            return None
        return Factors(part["user_factors"], part["item_factors"])

    def neighbours(self, name: str = "itemknn") -> Neighbours | None:
        """The item neighbours of part ``name`` (arrays ``indptr``, ``indices``, ``sims``),
        or None when the model has no such part."""
        part = self.part(name)
        if part is None or not {"indptr", "indices", "sims"} <= set(part):
            return None
        return Neighbours(part["indptr"], part["indices"], part["sims"])


def _write_beside(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a new file in its directory renamed over it.

    Never in place: a server may have the previous version of the file memory-mapped (a model
    trained again into the directory it serves), and truncating a mapped file kills that
    process with SIGBUS on its next read. A rename leaves the old file to its readers, and a
    reader never sees a half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save(path: Path, arr: np.ndarray) -> list[int]:
    """Write ``arr`` to ``path`` (:func:`_write_beside`); return its shape."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        arr = arr.astype(str)
    _write_beside(path, lambda fh: np.save(fh, arr, allow_pickle=False))
    return list(arr.shape)


def _load(path: Path, mmap: bool) -> np.ndarray:
    arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    # NOTE: a plain ndarray view of the mapping (no copy, still shared between workers):
    # slicing an np.memmap costs ~3 us per call on the request path, an ndarray ~1 us.
    return np.asarray(arr)


def fingerprint(*arrays: np.ndarray) -> str:
    """Return a sha256 over the bytes of ``arrays`` (identifies the training data)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_model(
    out_dir: str | Path,
    catalog: Catalog,
    users: UserTable,
    parts: Sequence[ModelPart],
    *,
    data_fingerprint: str,
    info: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> Path:
    """Write a versioned artifact directory ``out_dir`` and return its path.

    Every file is written new and renamed into place (a server that maps the previous
    version's arrays keeps reading them), and the manifest last, with the shape of every
    array, so a reader never loads half a model: an interrupted write into a directory that
    held a model leaves its old manifest, which :func:`load_model` then finds does not match
    the new arrays (:class:`ArtifactError`) instead of serving a mix of two models.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = dt.datetime.now(dt.UTC)
    version = version or f"{created:%Y%m%dT%H%M%S}-{data_fingerprint[:8]}"
    for sub in ("catalog", "users"):
        (out / sub).mkdir(exist_ok=True)
    for name, arr in {
        "item_ids": catalog.item_ids, "titles": catalog.titles,
        "categories": catalog.categories.astype(np.int32),
        "category_names": np.array(catalog.category_names, dtype=str),
        "cat_indptr": catalog.cat_indptr.astype(np.int64),
        "cat_indices": catalog.cat_indices.astype(np.int32),
    }.items():
        _save(out / "catalog" / f"{name}.npy", arr)
    _save(out / "users" / "user_ids.npy", users.user_ids)
    _save(out / "users" / "history_indptr.npy", users.history_indptr.astype(np.int64))
    _save(out / "users" / "history_items.npy", users.history_items.astype(np.int64))
    parts_manifest = {}
    for part in parts:
        if not part.name or set(part.name) - _NAME_OK:
            raise ArtifactError(f"invalid part name {part.name!r}")
        pdir = out / "parts" / part.name
        pdir.mkdir(parents=True, exist_ok=True)
        shapes = {}
        for aname, arr in part.arrays.items():
            if set(aname) - _NAME_OK:
                raise ArtifactError(f"invalid array name {aname!r} in part {part.name}")
            shapes[aname] = _save(pdir / f"{aname}.npy", arr)
        parts_manifest[part.name] = {
            "params": dict(part.params), "metrics": dict(part.metrics),
            "arrays": sorted(part.arrays), "shapes": shapes,
        }
    manifest = {
        "format": FORMAT,
        "version": version,
        "created": created.isoformat(),
        "data_fingerprint": data_fingerprint,
        "n_items": len(catalog),
        "n_users": len(users),
        "parts": parts_manifest,
        **({"info": dict(info)} if info else {}),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _write_beside(out / MANIFEST, lambda fh: fh.write(text))
    return out


def load_model(path: str | Path, mmap: bool = True) -> Model:
    """Load an artifact directory written by :func:`save_model` (no pickle, arrays mmapped)."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root} has no {MANIFEST}: train one with `rankly train`") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{root / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{root / MANIFEST} is not a manifest (a JSON object)")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{root}: unknown artifact format {manifest.get('format')!r}")
    _check_manifest(root, manifest)
    try:
        c = {n: _load(root / "catalog" / f"{n}.npy", mmap=False) for n in (
            "item_ids", "titles", "categories", "category_names", "cat_indptr", "cat_indices")}
        catalog = Catalog(
            item_ids=c["item_ids"], titles=c["titles"],
            categories=np.ascontiguousarray(c["categories"], dtype=np.int32),
            category_names=tuple(str(x) for x in c["category_names"].tolist()),
            cat_indptr=c["cat_indptr"], cat_indices=c["cat_indices"],
        )
        users = UserTable(
            user_ids=_load(root / "users" / "user_ids.npy", mmap=False),
            history_indptr=_load(root / "users" / "history_indptr.npy", mmap=mmap),
            history_items=_load(root / "users" / "history_items.npy", mmap=mmap),
        )
        parts = {
            name: {a: _load(root / "parts" / name / f"{a}.npy", mmap=mmap) for a in spec["arrays"]}
            for name, spec in manifest.get("parts", {}).items()
        }
    except (OSError, ValueError, EOFError) as exc:
        # NOTE: an empty .npy raises EOFError, a directory in a file's place IsADirectoryError
        raise ArtifactError(f"{root}: incomplete artifact: {exc}") from None
    _check_shapes(root, manifest, catalog, users, parts)
    return Model(manifest["version"], manifest, catalog, users, parts, root)


def _check_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a manifest without a version or whose parts do not list their arrays by name
    (a hand-edited or truncated one), before any array is opened."""
    version = manifest.get("version")
    if not isinstance(version, str) or not version:
        raise ArtifactError(f"{root / MANIFEST} names no version")
    parts = manifest.get("parts", {})
    if not isinstance(parts, dict):
        raise ArtifactError(f"{root / MANIFEST}: parts is not an object")
    for name, spec in parts.items():
        arrays = spec.get("arrays") if isinstance(spec, dict) else None
        if (not name or set(name) - _NAME_OK or not isinstance(arrays, list)
                or not all(isinstance(a, str) and a and not set(a) - _NAME_OK for a in arrays)):
            raise ArtifactError(f"{root / MANIFEST}: part {name!r} does not list its arrays")


def _check_shapes(root: Path, manifest: Mapping[str, Any], catalog: Catalog, users: UserTable,
                  parts: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Refuse arrays that are not the ones the manifest was written with: a training into
    this directory that was interrupted after some arrays and before its manifest, or files
    copied in from another model. Older manifests without ``shapes`` get the size checks."""
    wrong = []
    n_items, n_users = manifest.get("n_items"), manifest.get("n_users")
    if n_items is not None and (len(catalog.item_ids) != n_items
                                or len(catalog.categories) != n_items
                                or len(catalog.titles) != n_items):
        wrong.append(f"catalog/ holds {len(catalog.item_ids)} items, the manifest {n_items}")
    if n_users is not None and (len(users.user_ids) != n_users
                                or len(users.history_indptr) != n_users + 1):
        wrong.append(f"users/ holds {len(users.user_ids)} users, the manifest {n_users}")
    for name, spec in manifest.get("parts", {}).items():
        for aname, shape in (spec.get("shapes") or {}).items():
            arr = parts[name].get(aname)
            if arr is not None and list(arr.shape) != list(shape):
                wrong.append(f"parts/{name}/{aname}.npy has shape {list(arr.shape)}, the "
                             f"manifest {list(shape)}")
    if wrong:
        raise ArtifactError(f"{root}: arrays of another model (an interrupted training or "
                            f"copied files): {'; '.join(wrong[:3])}; train it again")
