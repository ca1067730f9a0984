"""The report's tables as data, each built from the sweep's run folders: the main table (one row per setting and
sampler point, plus the reference rows), FID over training, the sweep in the paper's layout, the sampling axis in DDIM
Table 1's, DDPM Table 4 (rate and distortion) and DDIM Table 2 (reconstruction). Rendering them is
:mod:`ddpm.report.render`'s.

Every metric column names its feature extractor, so figures from different extractors never share a column, and
the number of samples or test images behind each figure stands beside it.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import read_json, read_metrics
from ..provenance import DIVERGED
from ..samplers.point import SAMPLER_FILE, read_sampler_file
from ..settings import SETTING_FILE, Setting, read_setting
from ..vocabulary import KID_GAMMA

#: The sampling of a sweep without a sampling axis: its one point, DDPM's ancestral sampler on every step.
DEFAULT_SAMPLERS = ("ancestral",)

#: A score's key in fid_is.json → its column (with the extractor's name appended), and the scale the column shows it on:
#: KID on the conventional ×10³ (Bińkowski et al. 2018 and after). ``±``: the bootstrap standard error over the
#: samples (:func:`ddpm.metrics.bootstrap_errors`).
FIDELITY_KEYS = (("fid", "FID", 1), ("fid_se", "FID ±", 1), ("is_mean", "IS", 1), ("is_se", "IS ±", 1),
                 ("is_std", "IS std", 1), ("kid_mean", "KID ×10³", 1e3), ("kid_se", "KID ×10³ ±", 1e3),
                 ("precision", "precision", 1), ("recall", "recall", 1))
#: A score's key → its label: :data:`FIDELITY_KEYS`', and FID against the test split's.
FIDELITY_LABELS = {**{key: label for key, label, _ in FIDELITY_KEYS}, "fid_test": "FID test"}

#: The reference rows of the main table: samples of a Gaussian fitted to the train pixels (the bar every setting must
#: beat), and held-out real images, the test split (what a model that draws new images from the data distribution
#: scores at this sample count; a model can score below it only within noise or by reproducing train images, since
#: FID is taken against the train split).
GAUSSIAN_ROW = "gaussian baseline"
REAL_ROW = "test split (real, held out)"


def read_result(path: Path, setting: str | None = None) -> dict:
    """A result file; with ``setting``, one that records another setting (copied from another run) is refused."""
    found = read_json(path)
    if setting is not None and found.get("setting", setting) != setting:
        raise ValueError(f"{path} records the setting {found['setting']}, but it is in the folder of {setting}: it "
                         f"belongs to another run; delete it and run the workflow again")
    return found


def fidelity_column(key: str, extractor: str) -> str:
    """The column of the score ``key`` (of fid_is.json: :data:`FIDELITY_LABELS`) measured with the feature
    ``extractor``: its label and the extractor, ``FID [classifier]``."""
    return f"{FIDELITY_LABELS[key]} [{extractor}]"


def table_extractor(table: pd.DataFrame) -> str | None:
    """The feature extractor of a table's (first) FID column; None where it has none (every setting diverged)."""
    prefix = f"{FIDELITY_LABELS['fid']} ["
    return next((c[len(prefix):-1] for c in table.columns if c.startswith(prefix)), None)


def _fidelity_columns(scores: dict) -> dict:
    extractor = scores["extractor"]
    row = {fidelity_column(key, extractor): scores.get(key, float("nan")) * scale for key, _, scale in FIDELITY_KEYS}
    if not _kid_readable(scores):
        row.update({fidelity_column(key, extractor): float("nan") for key, _, _ in FIDELITY_KEYS
                    if key.startswith("kid")})
    if "fid_test" in scores:
        row[fidelity_column("fid_test", extractor)] = scores["fid_test"]
    row["samples"] = scores["num_samples"]
    row["FID against"] = _fid_reference(scores.get("fid_reference"))
    row["reference images"] = scores.get("reference_images", float("nan"))  # FID's real images (files of old: –)
    row["preprocess"] = scores.get("reference_preprocess")
    return row


def _kid_readable(scores: dict) -> bool:
    """Whether a result's KID can be read: torch-fidelity's on Inception's features, or on another extractor's with the
    kernel scaled to them (it records its γ, :func:`ddpm.metrics.kid_kernel_gamma`); one scored before that (≈ 10⁶ on
    the classifier's features) is not shown."""
    return scores["extractor"] == "inception-v3-compat" or KID_GAMMA in scores


def _fid_reference(reference: dict | None) -> str:
    """What a FID was computed against: the train images, this project's statistics file of them, or a statistics file
    from elsewhere (pytorch-fid, clean-fid: labelled foreign, with its name and the start of its sha256)."""
    if not reference:
        return "train split"
    if reference["origin"] == "ddpm":
        return "train split (statistics file)"
    return f"foreign statistics {Path(reference['stats']).name} ({reference['npz_sha256'][:12]})"


def run_axes(folder: Path, name: str) -> dict:
    """The axes of the run in ``folder`` (its setting.json), which must be the setting ``name`` it is reported as."""
    setting = read_setting(folder)
    if setting.name != name:
        raise ValueError(f"{folder / SETTING_FILE} records the setting {setting.name}, but the run is reported as "
                         f"{name}: it belongs to another run; delete it and run the workflow again")
    return setting.axes()


def _last_record(metrics_file: Path) -> dict:
    """The last line of a run's metrics.jsonl (its final step and loss), or {} if it logged none."""
    records = read_metrics(metrics_file)
    return records[-1] if records else {}


def _point_dir(folder: Path, sampler: str) -> Path:
    return folder / "samplers" / sampler


def build_table(run_dirs: dict[str, Path], baselines: dict[str, Path], *, samplers=DEFAULT_SAMPLERS,
                nll_train: bool = False) -> pd.DataFrame:
    """``run_dirs``: setting name → its folder (with metrics.jsonl, nll.json, ``samplers/<point>/fid_is.json`` for
    each of ``samplers``, and nll-train.json with ``nll_train``); one row per setting and sampler point, with what the
    point's samples cost; ``baselines``: row label → a fidelity-metrics JSON scored the same way (the Gaussian
    baseline, the test split)."""
    rows = []
    for name, folder in run_dirs.items():
        nll = read_result(folder / "nll.json", name)
        for sampler in samplers:
            scores = read_result(_point_dir(folder, sampler) / "fid_is.json", name)
            diverged = scores.get(DIVERGED, nll.get(DIVERGED))
            row = {"setting": name, **run_axes(folder, name), "sampler": sampler,
                   "status": "finished" if diverged is None else f"diverged at step {diverged}",
                   "final loss": _last_record(folder / "metrics.jsonl").get("loss", float("nan"))}
            if diverged is None:
                _check_sampler(scores, folder, sampler)
                row.update({"network evaluations": scores.get("network_evaluations", float("nan")),
                            "sampling images/s": scores.get("sampling_images_per_s", float("nan"))})
                row.update(_fidelity_columns(scores), **{"bits/dim": nll["bpd"], "bits/dim stderr": nll["bpd_stderr"],
                                                         "NLL images": nll["num_images"],
                                                         "decoder": nll.get("decoder", "exact")})
                if nll_train:
                    train = read_result(folder / "nll-train.json", name)
                    row.update({"bits/dim train": train["bpd"], "bits/dim train stderr": train["bpd_stderr"],
                                "NLL train images": train["num_images"]})
            rows.append(row)
    for label, path in baselines.items():
        rows.append({"setting": label, **_fidelity_columns(read_result(path))})
    table = pd.DataFrame(rows)
    extractor = table_extractor(table)
    if extractor is not None:
        table["FID vs best"] = compare_to_best(table, fidelity_column("fid", extractor),
                                               fidelity_column("fid_se", extractor), table["status"].notna())
    return table


def distinguishable(a: float, se_a: float, b: float, se_b: float) -> bool:
    """Whether two scores, each with its bootstrap standard error, differ by more than twice their combined error
    (|a − b| > 2 √(se_a² + se_b²): about a 95 % two-sided test for independent, roughly normal estimates)."""
    return abs(a - b) > 2 * float(np.hypot(se_a, se_b))


def compare_to_best(table: pd.DataFrame, column: str, se_column: str, candidates: pd.Series) -> pd.Series:
    """Each row against the best (lowest) ``column`` among the ``candidates`` rows (the settings, not the reference
    rows): ``best``, ``not distinguishable`` (within noise of it at this sample count, :func:`distinguishable`),
    ``worse`` or ``better`` (a reference row below it); empty where a row has no score or no standard error."""
    scored = table[column].astype(float).notna() & (table[se_column].astype(float).notna()
                                                    if se_column in table else False)
    pool = table[candidates & scored]
    if pool.empty:
        return pd.Series([""] * len(table), index=table.index)
    best = pool[column].astype(float).idxmin()
    best_value, best_se = float(table.loc[best, column]), float(table.loc[best, se_column])

    def verdict(i) -> str:
        if not scored[i]:
            return ""
        if i == best:
            return "best"
        value, se = float(table.loc[i, column]), float(table.loc[i, se_column])
        if not distinguishable(value, se, best_value, best_se):
            return "not distinguishable"
        return "worse" if value > best_value else "better"

    return pd.Series([verdict(i) for i in table.index], index=table.index)


def _check_sampler(scores: dict, folder: Path, sampler: str) -> None:
    """Scores in the folder of sampler point ``sampler`` must be of samples that point drew."""
    if scores.get("sampler", sampler) != sampler:
        raise ValueError(f"{_point_dir(folder, sampler) / 'fid_is.json'} scores samples of the sampler point "
                         f"{scores['sampler']}, but it is in the folder of {sampler}: delete it and run the workflow "
                         f"again")


def fid_over_training_table(run_dirs: dict[str, Path], snapshot_steps=(), *, sampler: str = DEFAULT_SAMPLERS[0]
                            ) -> pd.DataFrame:
    """FID over training: one row per setting and scored checkpoint (the snapshots at ``snapshot_steps``, then the
    final one sampled by ``sampler``, the sweep's first point), with its step and scores. A checkpoint the training
    never reached (it diverged) has no row, nor has a model that was not trained here (imported: no steps)."""
    rows = []
    for name, folder in run_dirs.items():
        points = [(step, "snapshot", folder / "snapshots" / f"step-{step}" / "fid_is.json") for step in snapshot_steps]
        final_step = _last_record(folder / "metrics.jsonl").get("step")
        if final_step is not None:
            points.append((final_step, "final", _point_dir(folder, sampler) / "fid_is.json"))
        for step, kind, path in points:
            scores = read_result(path, name)
            if DIVERGED not in scores:
                rows.append({"setting": name, "step": step, "checkpoint": kind, **_fidelity_columns(scores)})
    return pd.DataFrame(rows)


def best_checkpoints(curve: pd.DataFrame) -> pd.DataFrame:
    """Each setting's checkpoint with the minimum FID (DDPM reports sample quality there), among those scored with
    the most samples (FID from fewer samples is biased upwards, so it cannot win against the final's)."""
    if curve.empty:
        return curve
    fid = fidelity_column("fid", table_extractor(curve))
    most = curve.groupby("setting")["samples"].transform("max")
    eligible = curve[curve["samples"] == most]
    return eligible.loc[eligible.groupby("setting", sort=False)[fid].idxmin()].set_index("setting")


#: The paper table's metrics: (its column label, the published metric's name, the score's key in fid_is.json, whose
#: column in the full table names the extractor: :func:`fidelity_column`; None: bits/dim, the full table's column of
#: the same label). The last two are optional: left out where neither measured nor published.
PAPER_METRICS = (("IS", "is", "is_mean"), ("FID", "fid", "fid"), ("FID test", "fid_test", "fid_test"),
                 ("bits/dim", "bpd", None), ("bits/dim train", "bpd_train", None))
OPTIONAL_PAPER_METRICS = ("fid_test", "bpd_train")
#: The ± of a paper-table metric measured by one run (two or more: the standard deviation over seeds): IS's spread
#: over its splits (as the paper's), FID's bootstrap standard error over the samples.
ONE_RUN_SPREAD = {"is": "is_std", "fid": "fid_se"}


def paper_table(table: pd.DataFrame, published: pd.DataFrame, sweep: str, *, scaled_down: bool = False,
                curve: pd.DataFrame | None = None) -> pd.DataFrame:
    """The sweep in the paper's layout: one row per setting (seeds pooled), each metric measured, published and
    their difference (Δ = measured − paper), with the number of samples and the feature extractor.

    With ``curve`` (:func:`fid_over_training_table`), IS and FID come from each run's checkpoint with the minimum FID,
    as DDPM reports them, and ``min-FID step`` says which; bits/dim is the final checkpoint's.

    With one seed, IS ± is torch-fidelity's spread over splits (as the paper's); with two or more seeds every ± is
    the standard deviation over seeds. A setting the paper could not train says so in ``paper note``. A number
    measured under other conditions than the paper's (:func:`ddpm.paper.not_comparable`: a scaled-down run, fewer
    samples, another extractor, fewer images) gets no Δ, and ``not comparable`` says why, per column."""
    from ..paper import PAPER_PREPROCESS, SETTING_AXES, comparability_note, not_comparable, published_for

    settings = table[table["status"].notna()]  # the settings' rows, not the baselines'
    if curve is not None and not curve.empty:
        settings = _at_best_checkpoint(settings, best_checkpoints(curve))
    extractor = table_extractor(settings)

    def measured_column(label: str, key: str | None) -> str:
        return label if key is None else fidelity_column(key, extractor)

    sweep_metrics = set(published.loc[published["sweep"] == sweep, "metric"])
    metrics = [(label, metric, measured_column(label, key)) for label, metric, key in PAPER_METRICS
               if metric not in OPTIONAL_PAPER_METRICS or measured_column(label, key) in settings
               or metric in sweep_metrics]
    # A column the table lacks (every setting diverged, or no FID against the test set) reads as NaN.
    rows = []
    integer_axes = {f.name for f in fields(Setting) if f.type in ("int", int)}  # floats beside the baselines' NaN
    for axes, group in settings.groupby(list(SETTING_AXES), sort=False):
        setting = {axis: int(value) if axis in integer_axes else value for axis, value in zip(SETTING_AXES, axes)}
        paper = published_for(published, sweep, setting)
        row = {**setting, "seeds": len(group)}
        conditions = {"samples": _column(group, "samples").max(), "extractor": extractor, "scaled_down": scaled_down,
                      "reference_images": _column(group, "reference images").min(),
                      "preprocess": _only(group, "preprocess"), "decoder": _only(group, "decoder")}
        marks: dict[tuple[str, ...], list[str]] = {}
        for label, metric, column in metrics:
            values = _column(group, column)
            row[label] = values.mean()
            if len(group) > 1:
                row[f"{label} ±"] = values.std(ddof=1)
            elif metric in ONE_RUN_SPREAD:
                row[f"{label} ±"] = _column(group, fidelity_column(ONE_RUN_SPREAD[metric], extractor)).iloc[0]
            published_value = paper.get(metric, {}).get("value")
            row[f"{label} (paper)"] = published_value
            if metric == "is":
                row["IS ± (paper)"] = paper.get(metric, {}).get("std")
            images = _column(group, "NLL train images" if metric == "bpd_train" else "NLL images").min()
            source = paper.get(metric, {})
            reasons = tuple(not_comparable(metric, nll_images=images, **conditions,
                                           paper_preprocess=PAPER_PREPROCESS.get((source.get("paper"), source.get("table")))))
            if published_value is not None:
                marks.setdefault(reasons, []).append(label)
            row[f"{label} Δ"] = None if published_value is None or reasons else row[label] - published_value
        if "min-FID step" in group:
            row["min-FID step"] = ", ".join(str(int(s)) for s in group["min-FID step"].dropna())
        row["samples"] = _column(group, "samples").max()
        row["extractor"] = extractor
        if "FID against" in group:
            row["FID against"] = ", ".join(sorted(set(group["FID against"].dropna())))
        row["reference images"] = conditions["reference_images"]
        row["bits/dim decoder"] = conditions["decoder"]
        row["status"] = "; ".join(sorted(set(group["status"])))
        row["not comparable"] = comparability_note(marks)
        row["paper note"] = "; ".join(v["note"] for k, v in paper.items() if k == "unstable")
        row["source"] = ", ".join(sorted({f"{v['paper']}, {v['table']}" for k, v in paper.items()
                                          if k in (*(metric for _, metric, _ in metrics), "unstable")}))
        rows.append(row)
    return pd.DataFrame(rows)


def _at_best_checkpoint(settings: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The settings' rows with the sample-quality scores of their best checkpoint in place of the final one's."""
    settings = settings.copy()
    columns = [c for c in best.columns if c not in ("step", "checkpoint")]
    settings["min-FID step"] = float("nan")
    for i, name in settings["setting"].items():
        if name in best.index:
            for column in columns:
                settings.loc[i, column] = best.loc[name, column]
            settings.loc[i, "min-FID step"] = best.loc[name, "step"]
    return settings


def _only(group: pd.DataFrame, column: str):
    """The one value a column has in ``group`` (None where it has none); several are joined, so no reference or
    decoder is silently taken for another's."""
    values = sorted({str(v) for v in group[column].dropna()}) if column in group else []
    return values[0] if len(values) == 1 else (", ".join(values) or None)


def _column(group: pd.DataFrame, column: str) -> pd.Series:
    return group[column].astype(float) if column in group else pd.Series([float("nan")] * len(group))


def samplers_table(run_dirs: dict[str, Path], samplers, published: pd.DataFrame | None, sweep: str, *,
                   scaled_down: bool = False) -> pd.DataFrame:
    """The sampling axis in DDIM Table 1's layout: one row per (setting, sampler row: η or σ̂, skip, clipping), seeds
    pooled; for each S, the measured FID (mean over seeds), the published one, Δ = measured − paper (only where the
    FIDs were measured as the paper's: :func:`ddpm.paper.not_comparable`; ``not comparable`` says why not) and the
    seconds per image of sampling, then the FIDs' feature extractor and number of samples. A point on every step is
    S = T."""
    from ..paper import PAPER_PREPROCESS, SETTING_AXES, not_comparable, published_for_sampler

    cells: dict[tuple, dict] = {}
    measured_with = set()  # (feature extractor, samples, reference images, preprocess) of the FIDs
    paper_preprocess = None  # how the published numbers' data were prepared, where a paper says (LSUN)
    for name, folder in run_dirs.items():
        setting = run_axes(folder, name)
        for sampler in samplers:
            point_dir = _point_dir(folder, sampler)
            scores = read_result(point_dir / "fid_is.json", name)
            if DIVERGED in scores:
                continue
            _check_sampler(scores, folder, sampler)
            point = read_sampler_file(point_dir / SAMPLER_FILE)
            if point.name != sampler:
                raise ValueError(f"{point_dir / SAMPLER_FILE} records the sampler point {point.name}, but it is in "
                                 f"the folder of {sampler}: delete it and run the workflow again")
            S = point.num_steps(setting["T"])
            key = (*(setting[a] for a in SETTING_AXES), point.family.label(point), point.skip, point.clip)
            cell = cells.setdefault(key, {}).setdefault(S, {"fid": [], "seconds": [], "paper": None})
            cell["fid"].append(scores["fid"])
            images_per_s = scores.get("sampling_images_per_s")
            cell["seconds"].append(1 / images_per_s if images_per_s else float("nan"))
            measured_with.add((scores["extractor"], scores["num_samples"], scores.get("reference_images"),
                               scores.get("reference_preprocess")))
            if published is not None:
                source = published_for_sampler(published, sweep, setting, point).get("fid", {})
                cell["paper"] = source.get("value")
                paper_preprocess = paper_preprocess or PAPER_PREPROCESS.get((source.get("paper"), source.get("table")))
    all_steps = sorted({S for by_steps in cells.values() for S in by_steps})
    reasons = list(dict.fromkeys(reason for extractor, count, images, preprocess in sorted(measured_with, key=str)
                                 for reason in not_comparable("fid", samples=count, extractor=extractor,
                                                              scaled_down=scaled_down, reference_images=images,
                                                              preprocess=preprocess, paper_preprocess=paper_preprocess)))
    rows = []
    for key, by_steps in cells.items():
        row = dict(zip((*SETTING_AXES, "sampler", "skip", "clip"), key))
        for S in all_steps:
            cell = by_steps.get(S)
            measured = float(np.mean(cell["fid"])) if cell else float("nan")
            paper = cell["paper"] if cell else None
            row[f"S={S} FID"] = measured
            row[f"S={S} paper"] = paper
            row[f"S={S} Δ"] = None if paper is None or reasons else measured - paper
            row[f"S={S} s/image"] = float(np.mean(cell["seconds"])) if cell else float("nan")
        row["extractor"] = ", ".join(sorted({measured[0] for measured in measured_with}))
        row["samples"] = max((measured[1] for measured in measured_with), default=None)
        has_paper = any(cell["paper"] is not None for cell in by_steps.values())
        row["not comparable"] = ", ".join(reasons) if has_paper else ""
        rows.append(row)
    return pd.DataFrame(rows)


#: DDPM Table 4's rows: after 1000, 900, …, 100 reverse steps of T = 1000 (the same fractions of any other T).
TABLE4_FRACTIONS = tuple(f / 10 for f in range(10, 0, -1))


def rate_distortion(nll: dict, fractions=TABLE4_FRACTIONS) -> pd.DataFrame:
    """Progressive coding with the reverse process (DDPM §4.3, Table 4), from a gathered ``nll.json``.

    After k reverse steps the receiver holds x_t, t = T − k + 1 (1-based). The rate is the bits sent so far,
    L_T + Σ_{s=t}^{T−1} L_s (bits/dim); the distortion is the RMSE of x̂_0 predicted from x_t, on the 0..255 scale.
    After all T steps the rate is the bound less L_0, the decoder's term."""
    vb = np.asarray(nll["vb_per_timestep"], dtype=float)  # index 0: L_0; index s ≥ 1: L_s
    mse = np.asarray(nll["xstart_mse_per_timestep"], dtype=float)  # index t − 1: x̂_0 from x_t, on [-1, 1]
    T = len(vb)
    rows = []
    for fraction in fractions:
        k = max(1, round(fraction * T))
        t = T - k + 1
        rows.append({"reverse step": k, "rate (bits/dim)": nll["prior_bpd"] + vb[t:].sum(),
                     "distortion (RMSE, 0..255)": float(np.sqrt(mse[t - 1]) * 127.5)})
    return pd.DataFrame(rows)


def rate_distortion_table(run_dirs: dict[str, Path], published: pd.DataFrame | None, sweep: str) -> pd.DataFrame:
    """Table 4 for every setting that has a bound (a diverged one has none), with the paper's rows beside its own
    (published for T = 1000: reverse step k of the paper is reverse step k here)."""
    from ..paper import published_for

    parts = []
    for name, folder in run_dirs.items():
        nll = read_result(folder / "nll.json")
        if DIVERGED in nll:
            continue
        part = rate_distortion(nll)
        part.insert(0, "setting", name)
        paper = published_for(published, sweep, run_axes(folder, name)) if published is not None else {}
        for column, metric in (("rate (paper)", "rate_bpd"), ("distortion (paper)", "distortion_rmse")):
            part[column] = [paper.get(f"{metric}_step{k}", {}).get("value", np.nan) for k in part["reverse step"]]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


#: DDIM Table 2's columns: the setting's axes, S, then the error measured (mean over seeds), its ±, published, Δ.
RECONSTRUCTION_COLUMNS = ("schedule", "T", "mean_type", "var_type", "loss_type", "S", "seeds", "reconstruction MSE",
                          "reconstruction MSE ±", "reconstruction MSE (paper)", "reconstruction MSE Δ",
                          "network evaluations", "skip", "images", "status", "not comparable", "source")


def reconstruction_table(run_dirs: dict[str, Path], steps, published: pd.DataFrame | None, sweep: str, *,
                         scaled_down: bool = False) -> pd.DataFrame:
    """DDIM Table 2: one row per setting (seeds pooled) and S of ``steps`` (each run's ``reconstruction/S<S>.json``,
    ``ddpm evaluate reconstruction``): the per-dimension MSE on [0, 1] of test images encoded and decoded on S steps
    (the mean over seeds), its ± (one seed: the standard error over the images; two or more: the standard deviation
    over seeds), the published error, Δ = measured − paper only where the error was measured as the paper's
    (:func:`ddpm.paper.not_comparable`: not scaled down, the whole CIFAR-10 test split; ``not comparable`` says why
    not), the network evaluations per image (both ways), the skip and the number of test images. A setting whose
    training diverged has its row, with no error. No ``steps``: a table without rows."""
    from ..paper import SETTING_AXES, not_comparable, published_for_sampler
    from ..vocabulary import RECONSTRUCTION_METRIC as METRIC
    from ..samplers.families.ddim import reconstruction_point

    cells: dict[tuple, list[dict]] = {}
    for name, folder in run_dirs.items():
        setting = run_axes(folder, name)
        for S in sorted(steps):
            path = folder / "reconstruction" / f"S{S}.json"
            found = read_result(path, name)
            if DIVERGED not in found and found.get("steps") != S:
                raise ValueError(f"{path} records the reconstruction on S = {found.get('steps')} steps, but it is the "
                                 f"file of S = {S}: delete it and run the workflow again")
            cells.setdefault((*(setting[a] for a in SETTING_AXES), S), []).append(found)
    rows = []
    for key, results in cells.items():
        setting, S = dict(zip(SETTING_AXES, key[:-1])), key[-1]
        measured = [r for r in results if DIVERGED not in r]
        values = [r[METRIC] for r in measured]
        row = {**setting, "S": S, "seeds": len(results),
               "reconstruction MSE": float(np.mean(values)) if values else float("nan"),
               "reconstruction MSE ±": (float(np.std(values, ddof=1)) if len(values) > 1
                                        else measured[0][f"{METRIC}_stderr"] if measured else float("nan"))}
        skips = sorted({r["skip"] for r in measured})
        paper = None
        if published is not None:
            point = reconstruction_point(S, skips[0] if skips else "uniform")  # the skip is no key of the paper's
            paper = published_for_sampler(published, sweep, setting, point).get(METRIC)
        images = min((r["num_images"] for r in measured), default=float("nan"))
        reasons = not_comparable(METRIC, reconstruction_images=images, scaled_down=scaled_down)
        row["reconstruction MSE (paper)"] = paper["value"] if paper else None
        row["reconstruction MSE Δ"] = (row["reconstruction MSE"] - paper["value"]
                                       if paper and measured and not reasons else None)
        evaluations = sorted({r["network_evaluations"] for r in measured})
        row["network evaluations"] = evaluations[0] if len(evaluations) == 1 else float("nan")
        row["skip"] = ", ".join(skips)
        row["images"] = images
        row["status"] = "; ".join(sorted({"finished" if DIVERGED not in r else f"diverged at step {r[DIVERGED]}"
                                          for r in results}))
        row["not comparable"] = ", ".join(reasons) if paper else ""
        row["source"] = f"{paper['paper']}, {paper['table']}" if paper else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RECONSTRUCTION_COLUMNS))
