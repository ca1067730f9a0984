"""The sweep's report: one table row per setting (plus the baselines), as CSV, Markdown and LaTeX, and figures.

Every metric column names its feature extractor, so figures from different extractors never share a column, and
the number of samples or test images behind each figure stands beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_open
from .settings import parse_setting_name

FIDELITY_KEYS = (("fid", "FID"), ("is_mean", "IS"), ("is_std", "IS std"), ("kid_mean", "KID"),
                 ("precision", "precision"), ("recall", "recall"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def _fidelity_columns(scores: dict) -> dict:
    extractor = scores["extractor"]
    row = {f"{label} [{extractor}]": scores[key] for key, label in FIDELITY_KEYS}
    row["samples"] = scores["num_samples"]
    return row


def _final_loss(metrics_file: Path) -> float:
    lines = metrics_file.read_text().splitlines()
    return json.loads(lines[-1])["loss"] if lines else float("nan")


def build_table(run_dirs: dict[str, Path], baselines: dict[str, Path]) -> pd.DataFrame:
    """``run_dirs``: setting name → its folder (with fid_is.json, nll.json, metrics.jsonl); ``baselines``:
    row label → a fidelity-metrics JSON scored the same way (the Gaussian baseline, the test split)."""
    rows = []
    for name, folder in run_dirs.items():
        nll = _read_json(folder / "nll.json")
        rows.append({
            "setting": name,
            **parse_setting_name(name),
            "final loss": _final_loss(folder / "metrics.jsonl"),
            **_fidelity_columns(_read_json(folder / "fid_is.json")),
            "bits/dim": nll["bpd"],
            "bits/dim stderr": nll["bpd_stderr"],
            "NLL images": nll["num_images"],
        })
    for label, path in baselines.items():
        rows.append({"setting": label, **_fidelity_columns(_read_json(path))})
    return pd.DataFrame(rows)


def _cell(v, *, missing: str, text=str) -> str:
    """A table cell: floats to 4 significant digits, NaN / None / NA as ``missing``, anything else through ``text``."""
    if isinstance(v, float):
        return missing if np.isnan(v) else f"{v:.4g}"
    return missing if v is None or v is pd.NA else text(v)


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v, missing="–") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _latex(table: pd.DataFrame) -> str:
    def esc(text) -> str:
        return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%").replace("#", "\\#")

    lines = ["\\begin{tabular}{" + "l" * len(table.columns) + "}", "\\hline",
             " & ".join(esc(c) for c in table.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(_cell(v, missing="--", text=esc) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex``."""
    stem = Path(stem)
    outputs = []
    for suffix, render in ((".csv", lambda t: t.to_csv(index=False)), (".md", _markdown), (".tex", _latex)):
        path = stem.with_suffix(suffix)
        with atomic_open(path, "w") as f:
            f.write(render(table))
        outputs.append(path)
    return outputs


def plot_loss_curves(run_dirs: dict[str, Path], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, folder in run_dirs.items():
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Training loss per setting")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
