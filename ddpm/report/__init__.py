"""The sweep's report (``ddpm report``, rule report): its tables, each as CSV, Markdown, LaTeX and an HTML page, and its
figures; with the sweep's tracking file, all of them attached to the sweep's parent MLflow run.

:data:`OUTPUTS` is the one list of what the report writes: the workflow's rule report takes its outputs from it
(``report_outputs`` in ``workflow/rules/common.smk``) and :func:`write_report` the paths it writes to, so the two
cannot disagree. The tables as data are :mod:`ddpm.report.tables`', their rendering :mod:`ddpm.report.render`'s, the
figures :mod:`ddpm.report.figures`'. Importing this package is cheap (no pandas, no matplotlib, no torch): the
workflow reads :data:`OUTPUTS` when it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The formats every table is written in (beside its HTML page): the table as it is (CSV, for programs), and rendered.
TABLE_FORMATS = ("csv", "md", "tex")


@dataclass(frozen=True)
class Output:
    """One of the report's outputs. ``medium``: ``table`` (``<tables>/<name><suffix>.{csv,md,tex}`` and the HTML page
    ``<tables>/html/<page>-<name><suffix>.html``: numbered, as the Snakemake report lists a category's files by name) or
    ``figure`` (``<figures>/<name><suffix>.png``); ``<name>``: the sweep's. ``caption``: its caption in the Snakemake
    report (a file of ``workflow/report/``), under ``category``; ``title``: a table's caption in its rendered files
    (``{name}``: the sweep's)."""

    medium: str
    kind: str
    suffix: str
    caption: str
    category: str
    page: int | None = None
    title: str = ""

    @property
    def key(self) -> str:
        """Its name among rule report's outputs: ``table_main``, ``figure_rate_distortion``…"""
        return f"{self.medium}_{self.kind.replace('-', '_')}"

    def files(self, tables: str, figures: str, name: str) -> list[str]:
        """Its files but the HTML page: a table's CSV, Markdown and LaTeX, a figure's PNG."""
        if self.medium == "figure":
            return [f"{figures}/{name}{self.suffix}.png"]
        return [f"{tables}/{name}{self.suffix}.{ext}" for ext in TABLE_FORMATS]

    def shown(self, tables: str, figures: str, name: str) -> str:
        """The file the Snakemake report shows: a table's HTML page, a figure's PNG."""
        if self.medium == "figure":
            return self.files(tables, figures, name)[0]
        return f"{tables}/html/{self.page}-{name}{self.suffix}.html"


#: The report's outputs: its tables, the main one first, then its figures.
OUTPUTS = (
    Output("table", "main", "", "main_table.rst", "Tables", 1,
           "{name}: every setting × sampler point, and two reference rows scored the same way"),
    Output("table", "paper", "-paper", "paper_table.rst", "Tables", 2,
           "{name} in the paper's layout: measured, published and Δ per setting (seeds pooled)"),
    Output("table", "samplers", "-samplers", "samplers.rst", "Tables", 3,
           "{name}: FID against the number of sampling steps S, per sampler (DDIM Table 1's layout)"),
    Output("table", "fid-over-training", "-fid-over-training", "fid_over_training.rst", "Tables", 4,
           "{name}: FID and IS of each scored checkpoint"),
    Output("table", "rate-distortion", "-rate-distortion", "rate_distortion.rst", "Tables", 5,
           "{name}: rate and distortion along the reverse process (DDPM Table 4)"),
    Output("table", "reconstruction", "-reconstruction", "reconstruction.rst", "Tables", 6,
           "{name}: test images encoded by DDIM (η = 0) and decoded on S steps each way, the per-dimension MSE on "
           "[0, 1] (DDIM Table 2); ± is its standard error over the images (one seed) or the standard deviation over "
           "seeds"),
    Output("figure", "loss", "-loss", "loss.rst", "Training"),
    Output("figure", "rate-distortion", "-rate-distortion", "rate_distortion.rst", "Paper figures"),
    Output("figure", "schedules", "-schedules", "schedules.rst", "Paper figures"),
    Output("figure", "fid-over-training", "-fid-over-training", "fid_over_training.rst", "Paper figures"),
    Output("figure", "samplers", "-samplers", "samplers.rst", "Paper figures"),
)


def report_options(config: dict, name: str) -> dict:
    """What the report reads from the sweep's resolved config (``ddpm.configcheck.resolve_config``): its sampler
    points in order (the first is each setting's own: the paper table, FID over training), the steps of its FID
    snapshots and of its reconstructions (DDIM Table 2), whether it has bits/dim on the train split, the sweep its
    published numbers are filed under (default: ``name``, the sweep's), whether it is scaled down (``scale: tiny``:
    no Δ, every published number not comparable) and whether its linear schedules are rescaled."""
    from ..samplers.point import expand_sampling

    return {"samplers": [point.name for point in expand_sampling(config)],
            "snapshot_steps": sorted(config["fid_over_training"]["steps"]),
            "reconstruction_steps": sorted(config["reconstruction"]["steps"]),
            "nll_train": bool(config["evaluate"]["nll_train_images"]),
            "paper_sweep": config.get("paper_sweep") or name,
            "scaled_down": config["scale"] == "tiny",
            "schedule_rescale": bool(config["train"]["schedule_rescale"])}


def write_report(runs, *, out_stem: str | Path, figures: str | Path, gaussian, test_split, config: dict,
                 published=None, tracking=None):
    """``ddpm report``: the sweep's tables and figures, every one of :data:`OUTPUTS`. ``runs``: the settings' folders;
    ``out_stem``: ``<tables>/<name>``, the tables' folder and the sweep's name; ``figures``: the figures' folder;
    ``gaussian``, ``test_split``: the reference rows' scores; ``config``: the sweep's resolved config
    (:func:`report_options`); ``published``: the papers' numbers (CSV), put beside the sweep's; ``tracking``: the
    sweep's tracking file: every table and figure then also goes to the sweep's parent MLflow run, with ``config``,
    and the run is finished. Returns the main table."""
    from ..paper import load_published
    from .figures import plot_fid_over_training, plot_loss_curves, plot_rate_distortion, plot_samplers, plot_schedules
    from .render import write_tables

    published = load_published(published) if published else None  # read first: a bad file stops here
    tables_dir, name, figures = str(Path(out_stem).parent), Path(out_stem).name, str(figures)
    options = report_options(config, name)
    run_dirs = {Path(r).name: Path(r) for r in runs}
    tables = build_tables(run_dirs, {"gaussian": Path(gaussian), "test_split": Path(test_split)}, published, options)
    draw = {"loss": lambda path: plot_loss_curves(run_dirs, path),
            "rate-distortion": lambda path: plot_rate_distortion(run_dirs, path),
            "schedules": lambda path: plot_schedules(run_dirs, path, rescale=options["schedule_rescale"]),
            "fid-over-training": lambda path: plot_fid_over_training(tables["fid-over-training"][0], path),
            "samplers": lambda path: plot_samplers(tables["samplers"][0], path)}
    written = []
    for output in OUTPUTS:
        if output.medium == "table":
            table, drop_empty = tables[output.kind]
            written += write_tables(table, f"{tables_dir}/{name}{output.suffix}",
                                    caption=output.title.format(name=name),
                                    html=output.shown(tables_dir, figures, name), drop_empty=drop_empty)
        else:
            path = output.shown(tables_dir, figures, name)
            draw[output.kind](path)
            written.append(Path(path))
    if tracking:
        attach_to_mlflow(tracking, written, config)
    return tables["main"][0]


def build_tables(run_dirs: dict[str, Path], baselines: dict[str, Path], published, options: dict) -> dict:
    """The report's tables (:mod:`ddpm.report.tables`), kind → (the table, whether its rendering drops the columns
    no row fills: the paper's and sampler's Δ and published columns where nothing is published, …); the samplers,
    paper and reconstruction tables are printed as they are made. ``baselines``: the Gaussian baseline's and the test
    split's scores."""
    import pandas as pd

    from . import tables as t

    samplers, sweep, scaled_down = options["samplers"], options["paper_sweep"], options["scaled_down"]
    table = t.build_table(run_dirs, {t.GAUSSIAN_ROW: baselines["gaussian"], t.REAL_ROW: baselines["test_split"]},
                          samplers=samplers, nll_train=options["nll_train"])
    curve = t.fid_over_training_table(run_dirs, options["snapshot_steps"], sampler=samplers[0])
    by_sampler = t.samplers_table(run_dirs, samplers, published, sweep, scaled_down=scaled_down)
    print(by_sampler.to_string(index=False))
    beside = pd.DataFrame()
    if published is not None:
        own = table[table["sampler"].isna() | (table["sampler"] == samplers[0])]  # the settings' own and baselines
        beside = t.paper_table(own, published, sweep, scaled_down=scaled_down, curve=curve)
        print(beside.to_string(index=False))
    reconstruction = t.reconstruction_table(run_dirs, options["reconstruction_steps"], published, sweep,
                                            scaled_down=scaled_down)
    if not reconstruction.empty:
        print(reconstruction.to_string(index=False))
    return {"main": (table, False), "fid-over-training": (curve, False),
            "samplers": (by_sampler, True),  # no published numbers: no paper, Δ columns
            "paper": (beside, True),  # a scaled-down run: no Δ, a column of – each
            "rate-distortion": (t.rate_distortion_table(run_dirs, published, sweep), False),
            "reconstruction": (reconstruction, not reconstruction.empty)}  # scaled down: no Δ


def attach_to_mlflow(tracking, paths, config: dict | None) -> None:
    """Every file of the report goes to the sweep's parent MLflow run (under ``report/``), with the sweep's resolved
    config; the run is then finished. ``tracking``: the sweep's tracking file (rule mlflow_init)."""
    from .. import tracking as mlflow_tracking
    from ..tracking_view import view_url

    info = mlflow_tracking.read_tracking(tracking)
    if config is not None:
        mlflow_tracking.log_config(info["tracking_uri"], info["parent_run_id"], config)
    for path in paths:
        mlflow_tracking.log_artifact(info["tracking_uri"], info["parent_run_id"], path, "report")
    mlflow_tracking.finish_run(info["tracking_uri"], info["parent_run_id"], "FINISHED")
    print(f"MLflow ({info['tracking_uri']}): the runs sorted by FID with its columns at <the UI's address>/"
          f"{view_url(info['experiment_id'])}")
