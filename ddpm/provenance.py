"""What every file made from a checkpoint records, and the record of a training that diverged; torch-free, so that
the jobs that only read and merge such files (gathering shards, grids, the report) start without torch.

Every file a job makes from a checkpoint (sample and bits/dim shards, their merges, the scores) records where it
came from (:data:`PROVENANCE_KEYS`): the setting the checkpoint was trained as, the checkpoint's sha256, the sha256 of
the training images and the sampler point. Each job compares what it reads with what it was started for and refuses
a file of another setting, another checkpoint or other data, naming both (:func:`check_provenance`); the record is
read the same way from ``.npz`` and ``.json`` files (:func:`read_provenance`). A setting whose training diverged
leaves :data:`DIVERGED` in place of each output (:func:`record_divergence`), read back by :func:`diverged_step`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import load_npz, read_json, save_npz, write_json


#: The key that marks a setting whose training diverged, in its checkpoint and in every file made from it.
DIVERGED = "diverged_at_step"


#: What a file made from a checkpoint records of it (the values are strings; "" where unknown): the sampler point
#: (its name, :class:`ddpm.settings.SamplerPoint`) for samples and their scores.
PROVENANCE_KEYS = ("setting", "checkpoint_sha256", "data_sha256", "sampler")


def check_provenance(found: dict, where: str | Path, **expected: str | None) -> None:
    """Refuse a file made from a checkpoint (``found``: its recorded provenance) whose record differs from what the
    job expects (``expected``: any of :data:`PROVENANCE_KEYS`; None is not checked), naming both."""
    for key, value in expected.items():
        if value is None:
            continue
        if not found.get(key):
            raise ValueError(f"{where} does not record its {key.replace('_', ' ')} (written by an older version): "
                             f"delete it and run the workflow again")
        if found[key] != value:
            what = {"setting": "setting", "checkpoint_sha256": "checkpoint", "data_sha256": "training data",
                    "sampler": "sampler point"}[key]
            raise ValueError(f"{where} was made from another {what}: it records {key} {found[key]}, but this job "
                             f"is for {value}")


def provenance_arrays(provenance: dict) -> dict[str, np.ndarray]:
    """A checkpoint's provenance (:func:`checkpoint_provenance`) as arrays to store in an ``.npz``."""
    return {key: np.array(str(provenance[key])) for key in PROVENANCE_KEYS if key in provenance}


def read_provenance(path) -> dict[str, str]:
    """The provenance an ``.npz`` shard (or a merge of shards) records; ``{}`` for files written without one."""
    found = load_npz(path, (), optional=PROVENANCE_KEYS)
    return {key: str(value) for key, value in found.items()}


def agreed_provenance(paths, *, setting: str | None = None, sampler: str | None = None) -> dict[str, str]:
    """The one provenance that all of ``paths`` record (shards of one checkpoint and sampler point); refuses shards of
    different checkpoints or sampler points, and (with ``setting``, ``sampler``) shards of another setting or
    sampler point, naming the file."""
    records = [(path, read_provenance(path)) for path in paths]
    first_path, first = records[0]
    for path, found in records:
        check_provenance(found, path, setting=setting, sampler=sampler)
        if found != first:
            what = "sampler points" if {**found, "sampler": ""} == {**first, "sampler": ""} else "checkpoints"
            raise ValueError(f"{path} and {first_path} come from different {what} (they record "
                             f"{found or 'nothing'} and {first or 'nothing'}): delete the stale shards and run "
                             f"the workflow again")
    return first


class Diverged(ValueError):
    """The checkpoint records a training that diverged: there are no weights to sample or score."""

    def __init__(self, path, step: int):
        super().__init__(f"{path}: the training diverged at step {step}")
        self.step = step


def diverged_step(paths) -> int | None:
    """The step at which the setting's training diverged, if any of these ``.npz`` or ``.json`` files says so."""
    for path in paths:
        path = Path(path)
        if path.suffix == ".json":
            found = read_json(path).get(DIVERGED)
        else:
            found = load_npz(path, (), optional=(DIVERGED,)).get(DIVERGED)
        if found is not None:
            return int(found)
    return None


def record_divergence(path, step: int) -> None:
    """Write, in place of a job's output, the record that its setting's training diverged at ``step``: a ``.json``
    or ``.npz`` holding ``{diverged_at_step: step}`` (what later jobs and the report read), or for a figure (``.png``)
    a small image that says "diverged at step N"."""
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image, ImageDraw

        text = f"diverged at step {step}"
        image = Image.new("RGB", (8 * len(text) + 20, 40), "white")
        ImageDraw.Draw(image).text((10, 14), text, fill="black")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        print(f"the training diverged at step {step}: no figure; {path} says so")
        return
    if path.suffix == ".json":
        write_json(path, {DIVERGED: int(step)})
    else:
        save_npz(path, **{DIVERGED: np.array(int(step))})
    print(f"the training diverged at step {step}: nothing to compute; {path} records it")
