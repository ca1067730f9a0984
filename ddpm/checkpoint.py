"""Checkpoints: written atomically, read without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import torch

from .io import atomic_open


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically (see :mod:`ddpm.io`)."""
    with atomic_open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):  # torch.save hides a failed write (e.g. a full disk) this way
                raise err.__context__ from err
            raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: a file carrying code (a crafted pickle) is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt or unsafe files all end here
        raise ValueError(f"cannot load checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a ddpm checkpoint (expected a dict with 'model' and 'config')")
    return state
