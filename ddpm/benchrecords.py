"""The ``ddpm bench`` records whose rates give ``ddpm plan``'s hours (:mod:`ddpm.plan`): where they are committed,
which one a plan takes (:func:`find_record`: the newest GPU record in ``benchmarks/``, else the newest CPU one, said
so), a record read and checked (:func:`read_record`), and whose hours its rates give (:func:`device_note`). They are
written by ``ddpm bench`` (:func:`ddpm.bench.write_record`) and read here without torch.
"""

from __future__ import annotations

from pathlib import Path

from .configcheck import ROOT
from .databench import DATA_RECORD_MARK
from .io import read_json
from .presets import PRESETS

#: Where ``ddpm bench`` records are committed.
BENCHMARKS = ROOT / "benchmarks"
#: The fields a record must have to give hours (FID's rate, ``fid_images_per_s``, is optional: ``ddpm bench
#: --fid-images`` measures it).
REQUIRED_RATES = ("train_images_per_s", "sample_image_steps_per_s", "bpd_image_steps_per_s")


def _record_date(path: Path, record: dict) -> str:
    return str(record.get("date") or path.name)


def read_record(path) -> dict:
    """A ``ddpm bench`` record; one that cannot be read, or lacks a field the hours need, is refused naming it."""
    path = Path(path)
    record = read_json(path, hint="not a `ddpm bench` record")
    missing = [key for key in ("device", "preset") if not record.get(key)] + missing_rates(record, "optimised")
    if missing:
        raise ValueError(f"bench record {path}: missing or not a positive number: {', '.join(missing)} (a record "
                         f"written by `ddpm bench` has them)")
    if record["preset"] not in PRESETS:
        raise ValueError(f"bench record {path}: unknown preset {record['preset']!r}; valid presets: "
                         f"{', '.join(PRESETS)}")
    return record


def missing_rates(record: dict, part: str) -> list[str]:
    """The rates of ``record[part]`` the hours need that are not positive numbers, as ``part.key``."""
    rates = record.get(part) if isinstance(record.get(part), dict) else {}
    return [f"{part}.{key}" for key in REQUIRED_RATES
            if isinstance(rates.get(key), bool) or not isinstance(rates.get(key), (int, float)) or not rates[key] > 0]


def is_gpu(record: dict) -> bool:
    return str(record["device"]).startswith("cuda")


def find_record(folder=BENCHMARKS) -> tuple[Path | None, dict | None, list[str]]:
    """The newest GPU record (``device`` cuda…) in ``folder``, else the newest CPU record; records that cannot be
    used are skipped, each named in the notes."""
    usable, notes = [], []
    for path in sorted(Path(folder).glob("*.json")):
        if DATA_RECORD_MARK in path.name:  # `ddpm bench-data`'s records: memory, no rates
            continue
        try:
            usable.append((path, read_record(path)))
        except ValueError as err:
            notes.append(f"skipped {err}")
    if not usable:
        return None, None, notes + [f"no bench record in {folder}: hours are not estimated (run `ddpm bench`)"]
    gpu = [(p, r) for p, r in usable if is_gpu(r)]
    path, record = max(gpu or usable, key=lambda pr: _record_date(*pr))
    return path, record, notes


def shown_path(path: Path) -> str:
    """``path`` as the plan names it: relative to the working directory where it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def device_note(record: dict, path: Path, searched: Path | None) -> str:
    """Whose hours these are; ``searched``: the folder the record was found in (None: given with ``--bench``)."""
    where = record.get("device_name") or record["device"]
    if is_gpu(record):
        return f"GPU-hours on {where} ({record['device']}), from {shown_path(path)}"
    if searched is not None:
        return (f"no GPU record in {shown_path(Path(searched))}/: these are hours on the CPU of {shown_path(path)} "
                f"({where}), not GPU-hours")
    return f"{shown_path(path)} is a CPU record: these are hours on its CPU ({where}), not GPU-hours"
