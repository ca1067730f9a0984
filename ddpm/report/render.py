"""The report's tables rendered: CSV (the table as it is, for programs), Markdown, LaTeX and HTML (for people: a
caption, the legend, each metric's direction beside its header, numbers to 4 significant digits).

The tables themselves (:mod:`ddpm.report.tables`) name their columns as the CSV does; the direction arrows
(:func:`display_header`) and the legend are added here only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_open

#: Which way a metric column is better, shown beside its name in the Markdown, LaTeX and HTML tables (the CSV keeps
#: the bare names, for programs): a column's label up to its extractor (``FID [classifier]`` → ``FID``), or its
#: label in the paper and samplers tables (``S=10 FID``: by its last word).
LOWER_IS_BETTER = ("FID", "FID test", "KID ×10³", "bits/dim", "bits/dim train", "final loss", "s/image",
                   "network evaluations", "reconstruction MSE")
HIGHER_IS_BETTER = ("IS", "precision", "recall", "sampling images/s")


def _cell(v, *, missing: str, text=str) -> str:
    """A table cell: floats to 4 significant digits, NaN / None / NA as ``missing``, anything else through ``text``."""
    if isinstance(v, float):
        return missing if np.isnan(v) else f"{v:.4g}"
    return missing if v is None or v is pd.NA else text(v)


def display_header(column: str) -> str:
    """A column's name as the rendered tables show it: with ↓ (lower is better) or ↑ (higher is better) after its
    metric's label (:data:`LOWER_IS_BETTER`, :data:`HIGHER_IS_BETTER`), before the extractor: ``FID ↓ [classifier]``,
    ``S=10 FID ↓``, ``bits/dim ↓``. Errors (``±``), published values and differences (Δ) get no arrow."""
    label, bracket, rest = column.partition(" [")
    if label.endswith(("±", "Δ", "(paper)", "stderr")) or " ± " in label:
        return column
    words = label.split(" ")
    for cut in range(len(words)):  # the longest tail of the label that is a metric: "S=10 FID" → "FID"
        tail = " ".join(words[cut:])
        arrow = "↓" if tail in LOWER_IS_BETTER else "↑" if tail in HIGHER_IS_BETTER else None
        if arrow:
            return f"{label} {arrow}{bracket}{rest}"
    return column


#: What every rendered table says under its caption.
LEGEND = ("↓ lower is better, ↑ higher is better; ± after a score: its bootstrap standard error over the samples, or "
          "in the paper table the standard deviation over seeds (≥ 2 seeds) and, for IS of one seed, the spread over "
          "IS's splits as the papers give it; IS std: that spread; KID is shown ×10³, with the cubic kernel "
          "(γ x·y + 1)³: γ = 1/d (torch-fidelity's) on Inception's features; on the classifier's, whose scale is "
          "arbitrary, γ = 1 / their mean squared norm over the reference images (γ x·x ≈ 1, as 1/d supposes), "
          "and a KID scored without it is not shown; KID is unbiased, so it can be slightly below 0 where the samples "
          "are as close to the reference as its own images are (within its ±); FID vs best: a row's FID against "
          "the best setting's, distinguishable when they differ by more than twice their combined standard error; "
          "– : not measured or not published")


def _shown(table: pd.DataFrame, *, drop_empty: bool) -> pd.DataFrame:
    """The table as rendered: headers with their direction; with ``drop_empty``, without the columns no row fills."""
    if drop_empty:
        filled = [c for c in table.columns
                  if not all(v is None or v is pd.NA or v == "" or (isinstance(v, float) and np.isnan(v))
                             for v in table[c])]
        table = table[filled]
    return table.rename(columns=display_header)


def _markdown(table: pd.DataFrame, caption: str = "") -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v, missing="–") for v in row) + " |" for row in table.itertuples(index=False)]
    lead = [caption, "", LEGEND, ""] if caption else []
    return "\n".join([*lead, header, rule, *body]) + "\n"


def _latex(table: pd.DataFrame, caption: str = "") -> str:
    def esc(text) -> str:
        return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%").replace("#", "\\#")

    lines = ["\\begin{tabular}{" + "l" * len(table.columns) + "}", "\\hline",
             " & ".join(esc(c) for c in table.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(_cell(v, missing="--", text=esc) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    if caption:
        lines = ["\\begin{table}", "\\caption{" + esc(caption) + "}", *lines, "\\end{table}"]
    return "\n".join(lines) + "\n"


def _html(table: pd.DataFrame, caption: str = "") -> str:
    """A page with the table (its caption, the legend under it), for the Snakemake report and a browser."""
    from html import escape

    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    def cell(v) -> str:  # numbers right-aligned, words left
        number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        opening = '<td class="n">' if number else "<td>"
        return f"{opening}{escape(_cell(v, missing='–'))}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>\n" for row in table.itertuples(index=False))
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:13px}"
             "caption{text-align:left;font-weight:bold;margin-bottom:.5em}th,td{border:1px solid #ccc;padding:3px 6px;"
             "text-align:left}td.n{text-align:right}th{background:#f3f3f3}td:first-child{white-space:nowrap}"
             "p.legend{font-size:12px;color:#555;max-width:70em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(caption)}</title>"
            f"<style>{style}</style></head><body>\n<table>\n<caption>{escape(caption)}</caption>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
            f"<p class=\"legend\">{escape(LEGEND)}</p>\n</body></html>\n")


def write_tables(table: pd.DataFrame, stem: str | Path, *, caption: str = "", html: str | Path | None = None,
                 drop_empty: bool = False) -> list[Path]:
    """``<stem>.csv`` (the table as it is, bare column names), ``<stem>.md`` and ``<stem>.tex`` (with ``caption``, the
    legend, and each metric's direction in its header; with ``drop_empty``, without the columns no row fills) and,
    with ``html``, the same as an HTML page there."""
    stem = Path(stem)
    shown = _shown(table, drop_empty=drop_empty)
    renders = [(stem.with_suffix(".csv"), table.to_csv(index=False)), (stem.with_suffix(".md"), _markdown(shown, caption)),
               (stem.with_suffix(".tex"), _latex(shown, caption))]
    if html is not None:
        renders.append((Path(html), _html(shown, caption)))
    for path, text in renders:
        with atomic_open(path, "w") as f:
            f.write(text)
    return [path for path, _ in renders]
