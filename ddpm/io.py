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
from typing import IO, Callable, Iterator

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


def read_json(path: str | Path, *, hint: str = "") -> dict:
    """The JSON object in ``path``: the one way the package reads its JSON files. A file that cannot be read, is not
    JSON or holds no object raises ValueError naming it (and ``hint``: what to do about it)."""
    path = Path(path)
    advice = f"; {hint}" if hint else ""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}{advice}") from err
    if not isinstance(found, dict):
        raise ValueError(f"{path} is not a JSON object{advice}")
    return found


#: A training's log: one JSON object per logged step (step, loss, lr, grad_norm, images_per_s).
METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, in order: the one way the package reads it; a line that is not a JSON
    object raises ValueError naming the file and the line."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: not a JSON object")
        records.append(record)
    return records


def write_json(path: str | Path, payload) -> None:
    with atomic_open(path, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def save_grid(images: np.ndarray, path: str | Path, *, nrow: int | None = None, scale: int = 4) -> None:
    """Write uint8 images (N, C, H, W) as one PNG grid, ``nrow`` to a row (default: a square), 1 white pixel between
    and around them (torchvision's ``make_grid`` layout, grey images as RGB), each pixel enlarged ``scale`` times
    for viewing. numpy and PIL only: a grid job loads no torch."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != np.uint8 or not len(images):
        raise ValueError(f"a grid needs uint8 images (N, 1 or 3, H, W), N ≥ 1; got {images.dtype} {images.shape}")
    images = np.repeat(images, 3 // images.shape[1], axis=1)
    count, _, height, width = images.shape
    columns = min(nrow or int(np.ceil(np.sqrt(count))), count)
    rows = -(-count // columns)
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        top, left = (k // columns) * (height + 1) + 1, (k % columns) * (width + 1) + 1
        grid[top:top + height, left:left + width] = image.transpose(1, 2, 0)
    with atomic_open(path, "wb") as f:
        Image.fromarray(grid.repeat(scale, 0).repeat(scale, 1)).save(f, format="PNG")


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


#: A run's own files, in its folder: its weights, resume state, loss curve, setting and MLflow run id. Only its
#: training (or its import) writes them; a run folder is one that holds a checkpoint or a resume state. Its
#: snapshots' weights (``snapshots/step-N.pt``) are its own too.
RUN_FILES = ("checkpoint.pt", "resume.pt", "metrics.jsonl", "setting.json", "mlflow_run_id.txt")
RUN_SNAPSHOTS = "snapshots"


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a trained or imported run (its checkpoint) or one under way (its resume state)."""
    return any((Path(folder) / name).is_file() for name in RUN_FILES[:2])


def run_file_of(path: str | Path) -> Path | None:
    """The run folder whose own file ``path`` is (:data:`RUN_FILES`, or a snapshot's weights), if it exists."""
    path = Path(path)
    if path.name in RUN_FILES and is_run_folder(path.parent):
        return path.parent
    if path.suffix == ".pt" and path.parent.name == RUN_SNAPSHOTS and is_run_folder(path.parent.parent):
        return path.parent.parent
    return None


def check_writes(command: str, reads: list[tuple[str, str]], writes: list[tuple[str, str]], *,
                 owners: tuple[tuple[str, Callable[[Path], Path | None]], ...] = (("run", run_file_of),)) -> None:
    """Refuse, before any work, a command that would write over what it reads or over another job's own files.

    ``reads`` and ``writes`` are its (option, path) pairs. Refused, naming both options and paths: an output that is
    an input, or a folder that holds one; two outputs on one path; an output that is an existing file of a folder
    whose ``owners`` say so (what the folder is, and a function giving the folder a path is an own file of, e.g.
    :func:`run_file_of`). Paths are compared resolved (links followed)."""
    def resolved(path: str) -> Path:
        return Path(path).expanduser().resolve()

    inputs = [(option, path, resolved(path)) for option, path in reads]
    seen: dict[Path, tuple[str, str]] = {}
    for option, path in writes:
        target = resolved(path)
        for in_option, in_path, source in inputs:
            if source == target or target in source.parents:
                raise ValueError(f"{option} {path} would write over {in_option} {in_path}, which it reads: "
                                 f"give {option} a path of its own")
        if target in seen:
            raise ValueError(f"{option} {path} and {seen[target][0]} {seen[target][1]} are one file: give each its own")
        seen[target] = (option, path)
        for what, owner_of in owners if target.is_file() else ():
            owner = owner_of(target)
            if owner is not None:
                raise ValueError(f"{option} {path} would write over the {what} {owner}'s own "
                                 f"{target.relative_to(owner)}: `ddpm {command}` never writes it; give {option} a "
                                 f"path outside it")
