"""The papers' published numbers, kept as data (``config/published.csv``) and matched to a sweep's settings.

Each row is one number from one table: the sweep it belongs to (a paper config's ``name``), the paper and table it
comes from, the setting's axes (schedule, T, mean, variance, loss), the metric, its value and, where the paper gives
one, its ± (IS). A setting the paper could not train has the metric ``unstable`` and no value ("–" in the paper).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from .schedules import SCHEDULES
from .settings import SWEEP_AXES
from .samplers.point import SamplerPoint
from .vocabulary import LOSS_TYPES, MEAN_TYPES, VAR_TYPES

#: Metric names: FID against the train set (``fid``) or the test set (``fid_test``), Inception score, bits/dim on
#: the test set (``bpd``) and the train set (``bpd_train``), DDPM Table 4's rate and distortion after k reverse steps
#: (``rate_bpd_step<k>``, ``distortion_rmse_step<k>``), DDIM Table 2's per-dimension MSE on [0, 1] of a test image
#: encoded and decoded on S steps (``reconstruction_mse``, a ``ddim`` row with η = 0 and S), and ``unstable`` for a
#: setting the paper reports as "–".
TABLE4_STEPS = tuple(range(1000, 0, -100))
METRICS = ("fid", "fid_test", "is", "bpd", "bpd_train",
           *(f"{kind}_step{k}" for k in TABLE4_STEPS for kind in ("rate_bpd", "distortion_rmse")),
           "reconstruction_mse", "unstable")
#: The axes that name a setting of a paper's table: a sweep's axes but the seed.
SETTING_AXES = tuple(axis for axis in SWEEP_AXES if axis != "seed")
#: The sampler a number was measured with (DDIM's tables): sampler, S, η (ddim) or variance (ancestral). Empty: the
#: setting's own number, measured with the paper's own sampler (ancestral on all T steps).
SAMPLER_COLUMNS = ("sampler", "steps", "eta", "variance")
COLUMNS = ("sweep", "paper", "table", *SETTING_AXES, *SAMPLER_COLUMNS, "metric", "value", "std", "note")
#: How the papers measured their numbers: IS and FID of 50,000 samples (DDPM §4, DDIM §5.1, Improved DDPM §2.3)
#: with the TF Inception (torch-fidelity's ``inception-v3-compat`` is a port of it); bits/dim over the whole CIFAR-10
#: test (10,000) and train (50,000) splits (DDPM Table 1). A measurement under other conditions is not comparable.
PAPER_SAMPLES = 50_000
PAPER_EXTRACTOR = "inception-v3-compat"
PAPER_NLL_IMAGES = {"bpd": 10_000, "bpd_train": 50_000}
#: DDIM Table 2: the reconstruction error over the whole CIFAR-10 test split.
PAPER_RECONSTRUCTION_IMAGES = 10_000
SCALED_DOWN = "scaled down (digits, a CPU-sized network, a few steps)"


#: FID's reference in every paper: 50,000 real images (the CIFAR-10 train split; for LSUN, StyleGAN2's fid50k took
#: the first 50,000 of the prepared category). Where the images were prepared otherwise than as published, the paper
#: says how (:data:`PAPER_PREPROCESS`, keyed by paper and table).
PAPER_REFERENCE_IMAGES = 50_000
#: DDPM's LSUN data were prepared by StyleGAN's dataset_tool (center square, Lanczos resize) and scored by StyleGAN2's
#: code (Appendix B); DDIM's Table 3 sampled the same checkpoints (its protocol taken to be the same).
PAPER_PREPROCESS = {("Ho et al. 2020", "Table 3"): "stylegan", ("Song et al. 2020 (DDIM)", "Table 3"): "stylegan"}
#: The decoder likelihood of the papers' bits/dim (their code's: ``ddpm.vocabulary.DECODERS``).
PAPER_DECODER = "official"


def reference_reasons(reference_images=None, preprocess=None, paper_preprocess=None) -> list[str]:
    """Why a FID's reference is not the paper's: another number of real images than
    :data:`PAPER_REFERENCE_IMAGES`, or images prepared otherwise than ``paper_preprocess`` (None: as published)."""
    reasons = []
    if reference_images is not None and not _missing(reference_images) and int(reference_images) != PAPER_REFERENCE_IMAGES:
        reasons.append(f"reference of {int(reference_images):,} real images (paper: {PAPER_REFERENCE_IMAGES:,})")
    if paper_preprocess is not None and preprocess != paper_preprocess:
        reasons.append(f"images prepared {preprocess or 'otherwise'} (paper: {paper_preprocess})")
    return reasons


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def not_comparable(metric: str, *, samples=None, extractor: str | None = None, nll_images=None,
                   reconstruction_images=None, scaled_down: bool = False, reference_images=None, preprocess=None,
                   paper_preprocess=None, decoder=None) -> list[str]:
    """Why a measured ``metric`` cannot stand beside the paper's number (empty: it can): the run was scaled down, or
    fewer samples / another feature extractor (IS, FID), another reference than the paper's (FID:
    :func:`reference_reasons`), fewer images (bits/dim, the reconstruction error) or another ``decoder`` (bits/dim)
    than the paper's."""
    reasons = [SCALED_DOWN] if scaled_down else []
    if metric == "reconstruction_mse":
        images = reconstruction_images
        if images is not None and not math.isnan(images) and images < PAPER_RECONSTRUCTION_IMAGES:
            reasons.append(f"{int(images):,} images (paper: {PAPER_RECONSTRUCTION_IMAGES:,})")
        return reasons
    if metric in PAPER_NLL_IMAGES:
        if nll_images is not None and not math.isnan(nll_images) and nll_images < PAPER_NLL_IMAGES[metric]:
            reasons.append(f"{int(nll_images):,} images (paper: {PAPER_NLL_IMAGES[metric]:,})")
        if not _missing(decoder) and decoder != PAPER_DECODER:
            reasons.append(f"{decoder} decoder (paper: its code's tanh approximation, evaluate.decoder: official)")
        return reasons
    if samples is not None and not math.isnan(samples) and samples < PAPER_SAMPLES:
        reasons.append(f"{int(samples):,} samples (paper: {PAPER_SAMPLES:,})")
    if extractor is not None and extractor != PAPER_EXTRACTOR:
        reasons.append(f"{extractor} features (paper: Inception)")
    if metric == "fid":
        reasons += reference_reasons(reference_images, preprocess, paper_preprocess)
    return reasons


def comparability_note(marks: dict[tuple[str, ...], list[str]]) -> str:
    """``marks``: reasons → the columns they hold for, as one cell: ``FID, IS: 100 samples (paper: 50,000); …``."""
    return "; ".join(f"{', '.join(labels)}: {', '.join(reasons)}" for reasons, labels in marks.items() if reasons)


#: The published CSV's numeric columns and what each must hold (an empty cell: not given).
NUMBER_COLUMNS = {"T": int, "steps": int, "eta": float, "value": float, "std": float}


def _checked_lines(path: Path) -> list[int]:
    """The line each row of a published CSV starts on, once every row is checked to have all the columns and a number
    (or nothing) where one is due; else an error naming the file, the line, the column and the value (what pandas
    would say instead names none of them, or another column)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if tuple(header) != COLUMNS:
                raise ValueError(f"{path}: expected the columns {', '.join(COLUMNS)}; found {', '.join(header)}")
            lines = []
            line = reader.line_num + 1
            for record in reader:
                if record:  # a blank line is no row (nor is it one for pandas)
                    _check_published_row(record, f"{path}, line {line}")
                    lines.append(line)
                line = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read the published numbers {path}: {err}") from err
    return lines


def _check_published_row(record: list[str], where: str) -> None:
    """One row's length and numbers (:data:`NUMBER_COLUMNS`), ``where`` naming its file and line."""
    if len(record) != len(COLUMNS):
        short = len(record) < len(COLUMNS)
        ends = (f"ends at column {COLUMNS[len(record) - 1]} (value {record[-1]!r}): "
                f"{', '.join(COLUMNS[len(record):])} missing") if short \
            else f"goes on after column {COLUMNS[-1]} (value {record[len(COLUMNS)]!r})"
        raise ValueError(f"{where}: {len(record)} fields where the header has {len(COLUMNS)}; the row {ends}")
    row = dict(zip(COLUMNS, record))
    for column, kind in NUMBER_COLUMNS.items():
        if row[column] == "":
            continue
        try:
            number = kind(row[column])
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            what = "an integer" if kind is int else "a finite number"
            raise ValueError(f"{where}, column {column}: {row[column]!r} is not {what}")


def load_published(path: str | Path) -> pd.DataFrame:
    """Read and check the published numbers; an error names the file, the line, the column and the bad value."""
    path = Path(path)
    lines = _checked_lines(path)
    try:
        table = pd.read_csv(path, dtype={"T": "Int64", "steps": "Int64", "eta": "Float64", "value": "float64",
                                         "std": "float64"}, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"cannot read the published numbers {path}: {err}") from err
    valid = {"schedule": SCHEDULES, "mean_type": MEAN_TYPES, "var_type": VAR_TYPES, "loss_type": LOSS_TYPES,
             "metric": METRICS}
    for i, row in table.iterrows():
        where = f"{path}, line {lines[i]}"
        for column, allowed in valid.items():
            if row[column] not in allowed:
                raise ValueError(f"{where}: {column} {row[column]!r} is not one of {', '.join(allowed)}")
        if pd.isna(row["T"]) or row["T"] < 1:
            raise ValueError(f"{where}: T must be a positive integer, got {row['T']!r}")
        _check_sampler_columns(row, where)
        has_value = not pd.isna(row["value"])
        if has_value == (row["metric"] == "unstable"):
            raise ValueError(f"{where}: {'an unstable row has no value' if has_value else 'value is missing'}")
    keys = ["sweep", *SETTING_AXES, *SAMPLER_COLUMNS, "metric"]
    repeated = table[table.duplicated(keys, keep=False)]  # empty cells match each other
    if len(repeated):
        raise ValueError(f"{path}: a number is given twice: {repeated[keys].iloc[0].to_dict()}")
    return table


def _check_sampler_columns(row, where: str) -> None:
    """A sampler row names a sampler, S, and η (ddim) or the variance (ancestral); a setting's own row none of them."""
    if pd.isna(row["sampler"]):
        given = [c for c in SAMPLER_COLUMNS if not pd.isna(row[c])]
        if given:
            raise ValueError(f"{where}: {', '.join(given)} given without a sampler")
        return
    try:
        SamplerPoint(row["sampler"], None if pd.isna(row["steps"]) else int(row["steps"]),
                     eta=None if pd.isna(row["eta"]) else float(row["eta"]),
                     variance=None if pd.isna(row["variance"]) else row["variance"]).check("", T=int(row["T"]))
    except ValueError as err:
        raise ValueError(f"{where}: {str(err).lstrip('-')}") from None


def _matches(rows: pd.DataFrame, setting: dict) -> pd.DataFrame:
    for axis in SETTING_AXES:
        rows = rows[rows[axis] == setting[axis]]
    return rows


def _records(rows: pd.DataFrame) -> dict[str, dict]:
    return {row.metric: {"value": None if pd.isna(row.value) else float(row.value),
                         "std": None if pd.isna(row.std) else float(row.std),
                         "table": row.table, "paper": row.paper, "note": "" if pd.isna(row.note) else row.note}
            for row in rows.itertuples()}


def published_for(table: pd.DataFrame, sweep: str, setting: dict) -> dict[str, dict]:
    """The published numbers of one setting of ``sweep`` (its own, not a sampler's): metric → {"value", "std",
    "table", "paper", "note"}."""
    rows = _matches(table[table["sweep"] == sweep], setting)
    return _records(rows[rows["sampler"].isna()])


def published_for_sampler(table: pd.DataFrame, sweep: str, setting: dict, point: SamplerPoint) -> dict[str, dict]:
    """The published numbers of one setting of ``sweep`` sampled as ``point`` (its sampler, S — all T when the point
    takes every step — and η or variance; the skip and clipping are the paper's choice, not a key)."""
    rows = _matches(table[table["sweep"] == sweep], setting)
    steps = point.num_steps(int(setting["T"]))
    rows = rows[(rows["sampler"] == point.sampler) & (rows["steps"] == steps)]
    for key, value in point.family.published_match(point).items():  # the family's own keys: η, the variance
        rows = rows[(rows[key] - value).abs() < 1e-9] if isinstance(value, float) else rows[rows[key] == value]
    return _records(rows)
