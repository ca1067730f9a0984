"""The report's figures (matplotlib, drawn without a display): the training loss, DDPM Figure 5 (rate and
distortion along the reverse process), the noise schedules, FID over training and FID against the number of
sampling steps. Each is written atomically as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import METRICS_FILE, atomic_open, read_metrics
from ..provenance import DIVERGED
from .tables import best_checkpoints, fidelity_column, rate_distortion, read_result, run_axes, table_extractor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    _pyplot().close(fig)


def plot_loss_curves(run_dirs: dict[str, Path], path: str | Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, folder in run_dirs.items():
        records = read_metrics(folder / METRICS_FILE)
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Training loss per setting")
    _save(fig, path)


def plot_rate_distortion(run_dirs: dict[str, Path], path: str | Path) -> None:
    """DDPM Figure 5: rate and distortion against the number of reverse steps, one curve per setting."""
    plt = _pyplot()
    fig, (rate_ax, distortion_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, folder in run_dirs.items():
        nll = read_result(folder / "nll.json")
        if DIVERGED in nll:
            continue
        T = len(nll["vb_per_timestep"])
        curve = rate_distortion(nll, fractions=[k / T for k in range(1, T + 1)])
        rate_ax.plot(curve["reverse step"], curve["rate (bits/dim)"], label=name)
        distortion_ax.plot(curve["reverse step"], curve["distortion (RMSE, 0..255)"], label=name)
    rate_ax.set_xlabel("reverse steps")
    rate_ax.set_ylabel("rate (bits/dim)")
    distortion_ax.set_xlabel("reverse steps")
    distortion_ax.set_ylabel("distortion (RMSE, 0..255)")
    distortion_ax.legend(fontsize=7)
    fig.suptitle("Progressive coding: rate and distortion along the reverse process")
    _save(fig, path)


def plot_schedules(run_dirs: dict[str, Path], path: str | Path, *, rescale: bool = False) -> None:
    """The sweep's noise schedules side by side: ᾱ_t against t / T for each (schedule, T), with L_T, the prior
    term of the bound (bits/dim, measured on the test images), in the legend (as Improved DDPM's Figure 5)."""
    from ..schedules import make_betas

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for name, folder in run_dirs.items():
        setting = run_axes(folder, name)
        key = (setting["schedule"], setting["T"])
        if key in seen:
            continue
        seen.add(key)
        alpha_bar = np.cumprod(1.0 - make_betas(setting["schedule"], setting["T"], rescale=rescale))
        nll = read_result(folder / "nll.json")
        prior = f", L_T = {nll['prior_bpd']:.2e} bits/dim" if "prior_bpd" in nll else ""
        ax.plot(np.arange(1, setting["T"] + 1) / setting["T"], alpha_bar, label=f"{key[0]}, T = {key[1]}{prior}")
    ax.set_xlabel("t / T")
    ax.set_ylabel("ᾱ_t")
    ax.legend(fontsize=7)
    ax.set_title("Noise schedules" + (" (linear endpoints scaled by 1000 / T)" if rescale else ""))
    _save(fig, path)


def plot_fid_over_training(curve: pd.DataFrame, path: str | Path) -> None:
    """FID against the training step, one line per setting, a star at its minimum (see
    :func:`ddpm.report.tables.best_checkpoints`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not curve.empty:
        fid = fidelity_column("fid", table_extractor(curve))
        best = best_checkpoints(curve)
        for name, points in curve.groupby("setting", sort=False):
            line, = ax.plot(points["step"], points[fid], marker="o", label=name)
            ax.plot(best.loc[name, "step"], best.loc[name, fid], marker="*", markersize=14, color=line.get_color())
        ax.set_ylabel(fid)
    ax.set_xlabel("training step")
    ax.legend(fontsize=7)
    ax.set_title("FID over training (star: each setting's minimum)")
    _save(fig, path)


def plot_samplers(table: pd.DataFrame, path: str | Path) -> None:
    """FID against S (log scale), one line per row of :func:`ddpm.report.tables.samplers_table`; the published values dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [int(c.split()[0][2:]) for c in table.columns if c.endswith(" FID")]
    for _, row in table.iterrows():
        label = f"{row['sampler']}, {row['skip']}" + ("" if row["clip"] else ", no clip")
        if table[["schedule", "T"]].drop_duplicates().shape[0] > 1:
            label = f"{row['schedule']}-T{row['T']}: {label}"
        line, = ax.plot(steps, [row[f"S={S} FID"] for S in steps], marker="o", label=label)
        paper = [row[f"S={S} paper"] for S in steps]
        if any(v is not None and not pd.isna(v) for v in paper):
            ax.plot(steps, [np.nan if v is None else v for v in paper], linestyle="--", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("S: network evaluations per image (quadratic: repeated small steps dropped)")
    ax.set_ylabel("FID")
    ax.legend(fontsize=7)
    ax.set_title("FID against network evaluations, one line per sampler (dashed: published)")
    _save(fig, path)
