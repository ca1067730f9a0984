"""Files that are either complete or absent: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import functools
import json
import os
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on success it is synced and renamed to ``path``, on error removed.

    A crash or a full disk mid-write never leaves a partial file under the final name. The file gets the mode a
    plain ``open`` would give it (0666 less the umask: readable by the group), not ``mkstemp``'s private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write() names no file: name the target
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process's umask, read once (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, payload) -> None:
    with atomic_open(path, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` that it has) of an ``.npz`` file, read in full, without pickle.

    A missing, truncated or corrupt file, or one without these arrays, is a ValueError that names the file."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with data as f:
            damaged = f.zip.testzip()  # every member's CRC, also of arrays not asked for: a damaged file is refused
            if damaged is not None:
                raise ValueError(f"{damaged} is damaged (CRC check failed)")
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise ValueError(f"has no array {', '.join(map(repr, missing))} (it has: {', '.join(f.files) or 'none'})")
            return {k: f[k] for k in (*keys, *(k for k in optional if k in f.files))}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def source_commit() -> str | None:
    """The short commit of the checkout this package runs from (what a benchmark record is of), with
    ``+uncommitted`` where tracked files differ from it; None outside git."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return f"{commit}+uncommitted" if git("status", "--porcelain", "--untracked-files=no") else commit or None
    except (OSError, subprocess.CalledProcessError):
        return None
