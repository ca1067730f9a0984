"""The whole Snakemake workflow on a tiny config, its MLflow store, a real MLflow server and the UI in Chromium."""

import base64
import json
import re
import math
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, job_counts, skip_unless_required, snakemake
from conftest import mlflow_server as start_mlflow_server

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["linear-T50-eps-fixedlarge-mse-s0", "cosine-T50-eps-fixedlarge-mse-s0"]
SAMPLER_POINTS = ["ancestral", "ddim-eta0.5-S10-uniform"]  # tests/configs/tiny.yaml's sampling

#: Files the tiny workflow run added to or removed from the source tree (filled by the ``tiny_run`` fixture).
REPO_WRITES: dict[str, set[str]] = {}


def _source_tree(root: Path = ROOT) -> set[str]:
    """Every path in a checkout (``root``) but git's, the virtual environment's and Python's caches."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache"}
    paths = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]  # do not descend into them
        paths.update(str(Path(folder, name).relative_to(root)) for name in dirs + files)
    return paths


#: What a checkout needs for Snakemake (the ddpm package comes from the virtual environment).
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles")


def copy_checkout(folder: Path) -> Path:
    """The workflow's files copied to ``folder``: a checkout at another path."""
    folder.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, folder / name)
    return folder


def _snakefile(workdir: Path) -> Path:
    """The Snakefile of the checkout the ``tiny_run`` fixture ran from."""
    return workdir.parent / "ddpm repro ä" / "Snakefile"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny sweep, run from a checkout and in a working directory whose paths have a space and a non-ASCII
    character, by the venv's Snakemake in a shell where the venv is not activated (see conftest.snakemake)."""
    base = tmp_path_factory.mktemp("tiny") / "my runs ü"
    checkout = copy_checkout(base / "ddpm repro ä")
    workdir = base / "work dir é"
    before = {root: _source_tree(root) for root in (ROOT, checkout)}
    snakemake(workdir, "--cores", "2", snakefile=checkout / "Snakefile")
    after = {root: _source_tree(root) for root in (ROOT, checkout)}
    # the checkout the sweep ran from, and the repository whose package the jobs import
    REPO_WRITES.update(added={f"{root}: {path}" for root in after for path in after[root] - before[root]},
                       removed={f"{root}: {path}" for root in after for path in before[root] - after[root]})
    return workdir


def test_workflow_writes_every_expected_file(tiny_run):
    results = tiny_run / "results"
    expected = [results / "tables" / f"tiny{kind}.{ext}" for kind in ("", "-paper", "-rate-distortion", "-samplers")
                for ext in ("csv", "md", "tex")]
    expected += [results / "figures" / f"tiny-{figure}.png" for figure in ("rate-distortion", "schedules", "samplers")]
    expected += [results / "figures" / "tiny-loss.png",
                 results / "mlflow.db", results / "data" / "digits" / "manifest.json"]
    for setting in SETTINGS:
        run = results / "runs" / "tiny" / setting
        expected += [run / name for name in ("checkpoint.pt", "setting.json", "mlflow_run_id.txt", "metrics.jsonl",
                                              "progressive.png", "interpolation.png", "nll.json")]
        for point in SAMPLER_POINTS:
            expected += [run / "samplers" / point / name
                         for name in ("samples.npz", "samples.png", "sampler.json", "fid_is.json")]
            expected += [run / "samplers" / point / "samples" / f"shard-{i}.npz" for i in (0, 1)]
        expected += [run / "nll" / f"shard-{i}.npz" for i in (0, 1)]
        expected += [results / "logs" / "tiny" / "train" / f"{setting}.log",
                     results / "benchmarks" / "tiny" / "train" / f"{setting}.tsv"]
    missing = [str(p.relative_to(tiny_run)) for p in expected if not p.is_file()]
    assert not missing, missing


def test_fid_reference_statistics_are_computed_once_and_every_fid_records_its_conditions(tiny_run):
    """One ref_stats job for the sweep; every FID of every setting and sampler point was taken against that file and
    records how it was computed: samples, extractor weights, resize, reference split, EMA weights, seed."""
    from ddpm.store import sha256_file

    data = tiny_run / "results" / "data" / "digits"
    stats = data / "ref-stats" / "classifier-train.npz"
    record = json.loads(stats.with_suffix(".json").read_text())
    assert record["npz_sha256"] == sha256_file(stats) and record["split"] == "train" and record["origin"] == "ddpm"
    assert len(list((tiny_run / "results" / "benchmarks" / "data" / "digits" / "ref_stats").glob("*.tsv"))) == 1
    for setting in SETTINGS:
        for point in SAMPLER_POINTS:
            scores = json.loads((tiny_run / "results" / "runs" / "tiny" / setting / "samplers" / point /
                                 "fid_is.json").read_text())
            assert scores["fid_reference"]["npz_sha256"] == record["npz_sha256"], (setting, point)
            assert (scores["model_weights"], scores["sample_seed"], scores["reference_split"]) == ("ema", 0, "train")
            assert scores["extractor_weights"] == sha256_file(data / "classifier.pt") and scores["resize"] is None


def test_rules_write_nothing_outside_results(tiny_run):
    """Outputs, logs and benchmarks all go under results/; Snakemake keeps its own state in .snakemake/."""
    assert sorted(p.name for p in tiny_run.iterdir()) == [".snakemake", "results"]
    assert REPO_WRITES == {"added": set(), "removed": set()}


def test_same_config_gives_the_same_samples_whatever_the_shards_and_parallel_jobs(tiny_run, tmp_path):
    """Run again with other shard sizes, one job at a time: the same weights, samples and bits/dim, bit for bit."""
    config = yaml.safe_load(TINY.read_text())
    config["sample"]["shard_size"] = 50  # 4 shards instead of 2
    config["evaluate"]["nll_shard_size"] = 20  # 3 shards instead of 2
    resharded = tmp_path / "resharded.yaml"
    resharded.write_text(yaml.safe_dump(config))
    run = Path("results", "runs", "tiny", SETTINGS[0])
    samples = Path("samplers", SAMPLER_POINTS[1], "samples.npz")  # DDIM with η = 0.5: noise at every step
    snakemake(tmp_path / "again", "--cores", "1", str(run / samples), str(run / "nll.json"), config=resharded)
    first, again = tiny_run / run, tmp_path / "again" / run
    assert len(list((again / samples.parent / "samples").glob("shard-*.npz"))) == 4

    a, b = torch.load(first / "checkpoint.pt"), torch.load(again / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    a, b = np.load(first / samples), np.load(again / samples)
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["indices"], b["indices"])

    def per_image_bpd(folder):
        return np.concatenate([np.load(p)["total_bpd"] for p in sorted((folder / "nll").glob("shard-*.npz"))])

    assert np.array_equal(per_image_bpd(first), per_image_bpd(again))
    a, b = json.loads((first / "nll.json").read_text()), json.loads((again / "nll.json").read_text())
    assert a["bpd"] == b["bpd"] and a["num_images"] == b["num_images"]
    # per-timestep terms are float64 sums over differently grouped images: equal up to rounding
    assert np.allclose(a["vb_per_timestep"], b["vb_per_timestep"], rtol=1e-12, atol=0)


def test_a_diverging_setting_is_a_row_of_the_report_not_a_failed_sweep(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["sweep"]["schedule"] = ["linear"]
    config["train"].update(lr=1e30, warmup=0, grad_clip=0.0, on_divergence="record")
    diverging = tmp_path / "diverging.yaml"
    diverging.write_text(yaml.safe_dump(config))
    snakemake(tmp_path / "run", "--cores", "2", config=diverging)
    table = pd.read_csv(tmp_path / "run" / "results" / "tables" / "tiny-paper.csv")
    assert len(table) == 1 and table.loc[0, "status"].startswith("diverged at step ")
    assert pd.isna(table.loc[0, "FID"]) and pd.isna(table.loc[0, "bits/dim"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    statuses = {r.data.tags.get("ddpm.kind"): r.info.status for r in runs}
    assert statuses == {"setting": "FAILED", "sweep": "FINISHED"}, statuses


def test_table_has_one_row_per_setting_and_sampler_point_with_finite_metrics(tiny_run):
    table = pd.read_csv(tiny_run / "results" / "tables" / "tiny.csv")
    assert list(table["setting"]) == [s for s in SETTINGS for _ in SAMPLER_POINTS] + ["gaussian baseline",
                                                                                      "test split (real, held out)"]
    assert list(table["sampler"].iloc[:4]) == SAMPLER_POINTS * 2
    for column in ("FID [classifier]", "FID ± [classifier]", "IS [classifier]", "IS ± [classifier]",
                   "KID ×10³ [classifier]", "KID ×10³ ± [classifier]", "samples"):
        assert column in table.columns
        assert table[column].map(math.isfinite).all(), table[column]
    settings = table[table["setting"].isin(SETTINGS)]
    assert settings["FID test [classifier]"].map(math.isfinite).all()  # the settings, against the test split
    assert settings["bits/dim"].map(math.isfinite).all() and (settings["bits/dim"] > 0).all()
    assert (settings["samples"] == 200).all() and (settings["NLL images"] == 60).all()
    assert list(settings["network evaluations"]) == [50, 10, 50, 10]  # all T = 50 steps, DDIM's 10
    assert (settings["sampling images/s"] > 0).all()
    # the two points sample the same x_T differently: their scores differ
    assert settings["FID [classifier]"].iloc[0] != settings["FID [classifier]"].iloc[1]
    real = table.set_index("setting").loc["test split (real, held out)", "FID [classifier]"]
    gaussian = table.set_index("setting").loc["gaussian baseline", "FID [classifier]"]
    assert real < gaussian  # the extractor tells real digits from the fitted Gaussian
    scores = {json.loads((tiny_run / "results" / "runs" / "tiny" / s / "samplers" / p / "fid_is.json").read_text())[
        "kid_mean"] for s in SETTINGS for p in SAMPLER_POINTS}
    assert sorted(settings["KID ×10³ [classifier]"]) == pytest.approx(sorted(1e3 * k for k in scores))
    assert set(table["FID vs best"].dropna()) <= {"best", "not distinguishable", "worse", "better"}
    assert (table["FID vs best"] == "best").sum() == 1
    markdown = (tiny_run / "results" / "tables" / "tiny.md").read_text()
    assert all(s in markdown for s in SETTINGS) and "| FID ↓ [classifier] | FID ± [classifier] |" in markdown
    assert "| IS ↑ [classifier] |" in markdown and "| KID ×10³ ↓ [classifier] |" in markdown
    assert "↓ lower is better, ↑ higher is better" in markdown
    assert "\\begin{tabular}" in (tiny_run / "results" / "tables" / "tiny.tex").read_text()
    progressive = pd.read_csv(tiny_run / "results" / "tables" / "tiny-rate-distortion.csv")
    for setting in SETTINGS:  # Table 4 from the measured bound: after all T steps, rate + L_0 is the bound
        rows = progressive[progressive["setting"] == setting]
        nll = json.loads((tiny_run / "results" / "runs" / "tiny" / setting / "nll.json").read_text())
        assert list(rows["reverse step"]) == [50, 45, 40, 35, 30, 25, 20, 15, 10, 5]
        assert rows["rate (bits/dim)"].iloc[0] + nll["vb_per_timestep"][0] == pytest.approx(nll["bpd"], rel=1e-5)
        assert rows["rate (bits/dim)"].is_monotonic_decreasing
    beside = pd.read_csv(tiny_run / "results" / "tables" / "tiny-paper.csv")  # no published numbers for "tiny"
    assert list(beside["schedule"]) == ["linear", "cosine"] and beside["FID"].map(math.isfinite).all()
    assert beside["FID (paper)"].isna().all() and (beside["extractor"] == "classifier").all()
    own = settings[settings["sampler"] == "ancestral"]  # the paper table scores each setting's own sampler
    assert list(beside["FID"]) == pytest.approx(list(own["FID [classifier]"]))
    by_sampler = pd.read_csv(tiny_run / "results" / "tables" / "tiny-samplers.csv")
    assert list(zip(by_sampler["schedule"], by_sampler["sampler"])) == [
        ("linear", "ancestral"), ("linear", "η = 0.5"), ("cosine", "ancestral"), ("cosine", "η = 0.5")]
    assert by_sampler["S=10 FID"].isna().tolist() == [True, False, True, False]
    assert by_sampler["S=50 FID"].isna().tolist() == [False, True, False, True]
    assert (by_sampler["S=10 s/image"].dropna() < by_sampler["S=50 s/image"].dropna().to_numpy()).all()


def _store(tiny_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client, experiment, client.search_runs([experiment.experiment_id])


def test_mlflow_store_has_one_finished_run_per_setting_under_one_parent(tiny_run):
    client, experiment, runs = _store(tiny_run)
    parents = [r for r in runs if r.data.tags.get("ddpm.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ddpm.kind") == "setting"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted(SETTINGS)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for metric in ("fid_over_training", "bpd", "loss", "images_per_s"):
            assert math.isfinite(run.data.metrics[metric]), metric
        assert "fid" not in run.data.metrics  # a score lives on one run: the sampler point's
        assert run.data.params["schedule"] in ("linear", "cosine") and run.data.params["T"] == "50"
        assert run.data.params["speed"] == "fused_adam,foreach_ema"  # speed: auto, resolved on this CPU
        assert run.data.params["processes"] == "2"  # train.gpus: 2, one MLflow run written by rank 0 alone
        # Every logging step of the training loss is there once.
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert steps == [20, 40, 60]
        previews = [a.path for a in client.list_artifacts(run.info.run_id, "previews")]
        assert previews == ["previews/step-0000030.png", "previews/step-0000060.png"]
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id, "report")]
    assert "report/tiny.csv" in artifacts and "report/tiny-samplers.csv" in artifacts


def test_each_sampler_point_has_its_run_nested_under_its_settings_run(tiny_run):
    from ddpm.settings import SWEEP_AXES
    from ddpm.tracking import sampler_run_name

    client, _, runs = _store(tiny_run)
    settings = {r.info.run_name: r.info.run_id for r in runs if r.data.tags.get("ddpm.kind") == "setting"}
    points = [r for r in runs if r.data.tags.get("ddpm.kind") == "sampler"]
    assert sorted(r.info.run_name for r in points) == sorted(sampler_run_name(p, s) for s in SETTINGS
                                                             for p in SAMPLER_POINTS)
    for run in points:
        setting, point = run.data.tags["ddpm.setting"], run.data.tags["ddpm.sampler"]
        assert run.info.run_name == sampler_run_name(point, setting)
        assert run.data.tags["mlflow.parentRunId"] == settings[setting]
        own_params = client.get_run(settings[setting]).data.params  # the setting's axes, as its run has them
        assert {a: run.data.params[a] for a in SWEEP_AXES} == {a: own_params[a] for a in SWEEP_AXES}
        assert run.info.status == "FINISHED"
        for metric in ("fid", "is_mean", "kid_mean", "precision", "recall", "sampling_images_per_s"):
            assert math.isfinite(run.data.metrics[metric]), metric
        assert not [m for m in run.data.metrics if m.endswith("_over_training")]  # the curve is the setting's
        ddim = point.startswith("ddim")
        assert run.data.metrics["network_evaluations"] == (10 if ddim else 50)
        assert run.data.params["sampler"] == ("ddim" if ddim else "ancestral")
        assert run.data.params.get("eta") == ("0.5" if ddim else None)  # a key the sampler does not take is left out
        assert run.data.params["S"] == ("10" if ddim else "50")  # S = T for the point on every step
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fid")] == [10 if ddim else 50]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["samples.png"]
        # the setting's own point's FID is also the last point of the setting's FID over training; nothing else of
        # the points' is on the setting's run
        own = client.get_run(settings[setting]).data.metrics
        assert (own["fid_over_training"] == run.data.metrics["fid"]) == (not ddim) and "fid" not in own


@pytest.fixture(scope="module")
def mlflow_server(tiny_run):
    with start_mlflow_server(tiny_run / "results" / "mlflow.db") as url:
        yield url


def _post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_real_mlflow_server_serves_the_runs_and_metrics(mlflow_server, tiny_run):
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny",
                                timeout=30) as response:
        experiment_id = json.loads(response.read())["experiment"]["experiment_id"]
    found = _post(f"{mlflow_server}/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [experiment_id], "filter": "tags.`ddpm.kind` = 'setting'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in found) == sorted(SETTINGS)
    for run in found:
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert {"fid_over_training", "bpd", "loss"} <= set(metrics)
    points = _post(f"{mlflow_server}/api/2.0/mlflow/runs/search",
                   {"experiment_ids": [experiment_id], "filter": "tags.`ddpm.kind` = 'sampler'"})["runs"]
    assert len(points) == len(SETTINGS) * len(SAMPLER_POINTS)
    for run in points:
        assert {"fid", "is_mean", "kid_mean"} <= {m["key"] for m in run["data"]["metrics"]}


def _render(chromium: str, url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = 30000) -> str:
    """The page at ``url`` as headless Chromium has built it (its DOM after the scripts ran, or ``budget_ms`` of its
    virtual time); with ``screenshot``, a second run saves a 1600×1000 PNG of it there."""
    options = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--window-size=1600,1000"]
    if screenshot is not None:
        subprocess.run([*options, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    return subprocess.run([*options, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        skip_unless_required("Debian's chromium is not installed (.ci/run installs it)")
    return chromium


def _text(page: str) -> str:
    """The visible words of a dumped page, cells separated by " | "."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"(\s*\|\s*)+", " | ", re.sub(r"<[^>]+>", " | ", page))


def test_experiment_and_run_pages_render_the_run_names_in_chromium(mlflow_server, tiny_run, tmp_path):
    chromium = _chromium()
    _, experiment, runs = _store(tiny_run)
    page = _render(chromium, f"{mlflow_server}/#/experiments/{experiment.experiment_id}", tmp_path / "p0")
    assert ">tiny<" in page or "tiny</" in page, page[-2000:]  # the sweep's parent run (children fold under it)
    for i, run in enumerate(r for r in runs if r.data.tags.get("ddpm.kind") == "setting"):
        page = _render(chromium, f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}",
                       tmp_path / f"p{i + 1}")
        assert run.info.run_name in page, page[-2000:]


def test_the_experiments_metrics_view_shows_fid_is_and_bits_per_dim_columns_in_chromium(mlflow_server, tiny_run,
                                                                                        tmp_path):
    """The link the experiment's description and README give opens MLflow 3's runs view (not its GenAI overview) on
    the shared view the workflow stored: the sampler points' runs grouped by sampler, the point and FID as columns,
    sorted by FID, and FID against S, one line per sampler, in its charts. Checked in the page Chromium built (a
    screenshot is kept beside it for a person to look at; tests/test_tracking_trust.py looks closer)."""
    from ddpm.samplers import SamplerPoint
    from ddpm.tracking import sampler_curve
    from ddpm.tracking_view import EXPERIMENT_KIND_TAG, VIEW_GROUP_PARAM, VIEW_KEY, view_url

    chromium = _chromium()
    _, experiment, runs = _store(tiny_run)
    assert experiment.tags[EXPERIMENT_KIND_TAG[0]] == EXPERIMENT_KIND_TAG[1]
    assert view_url(experiment.experiment_id) in experiment.tags["mlflow.note.content"]
    assert f"mlflow.sharedViewState.{VIEW_KEY}" in experiment.tags
    screenshot = tmp_path / "runs-view.png"
    text = _text(_render(chromium, f"{mlflow_server}/{view_url(experiment.experiment_id)}", tmp_path / "view",
                         screenshot=screenshot))
    assert "You're viewing a shared view" in text and "Sort: fid" in text, text[:3000]
    assert f"Group by: {VIEW_GROUP_PARAM}" in text, text[:3000]
    header = text[text.index("Run Name"):text.index("Hide run")]  # the column headers, before the first row
    for column in ("sampler", "S", "eta"):  # the point's columns first; the grid draws only the columns in sight
        assert f"| {column} |" in header, (column, header)
    points = [r for r in runs if r.data.tags.get("ddpm.kind") == "sampler"]
    assert all(r.info.run_name in text for r in points)
    assert all(f"| {r.data.params['S']} |" in text for r in points)
    assert screenshot.stat().st_size > 10_000
    # (the charts fetch each run's metric history: 30 s of the page's virtual time drew none of them here, 60 s all)
    charts = _text(_render(chromium, f"{mlflow_server}/{view_url(experiment.experiment_id)}&compareRunsMode=CHART",
                           tmp_path / "charts", budget_ms=60000))
    assert "FID and IS against S, one line per sampler | (2)" in charts, charts[:3000]
    curves = {sampler_curve(SamplerPoint()), sampler_curve(SamplerPoint("ddim", 10, eta=0.5))}
    assert all(f"{curve} (fid)" in charts for curve in curves), charts[:5000]  # the legend: a line per sampler
    # Without the link, the UI of this version opens experiments on the GenAI overview (traces): what the link avoids.
    plain = _text(_render(chromium, f"{mlflow_server}/#/experiments/{experiment.experiment_id}", tmp_path / "plain"))
    assert "Sort: fid" not in plain


def test_snakemake_report_shows_every_table_as_html_the_main_one_first(tiny_run, tmp_path):
    chromium = _chromium()
    html = tiny_run / "results" / "report.html"
    snakemake(tiny_run, "--report", str(html), snakefile=_snakefile(tiny_run))
    page = _render(chromium, html.as_uri(), tmp_path / "profile")
    for name in ("Paper figures", "Tables", "Samples", "Training", "1-tiny.html", "2-tiny-paper.html",
                 "3-tiny-samplers.html", "4-tiny-fid-over-training.html", "5-tiny-rate-distortion.html",
                 "tiny-schedules.png", "tiny-rate-distortion.png", "progressive.png", "samples.png"):
        assert name in page, name
    screenshot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'shot'}", "--virtual-time-budget=20000", "--window-size=1280,900",
                    f"--screenshot={screenshot}", html.as_uri()], capture_output=True, timeout=180)
    from PIL import Image

    image = Image.open(screenshot).convert("L")
    assert image.size == (1280, 900)
    low, high = image.getextrema()
    assert high - low > 100  # something is drawn: the navigation and the workflow graph, not a blank page

    # The report embeds each result as a data URI and shows an HTML one in a frame: open the main table's as the
    # frame does, and find every row of the main table (each setting × sampler point, both reference rows).
    source = html.read_text()
    entries = re.findall(r'"(data:text/html;[^"]*)"', source)
    pages = {}
    for uri in entries:
        body = base64.b64decode(uri.split(",", 1)[1]).decode()
        pages[re.search(r"<title>(.*?)</title>", body).group(1)] = uri
    main = next(uri for title, uri in pages.items() if title.startswith("tiny: every setting"))
    shown = tmp_path / "main-table.html"
    shown.write_text(base64.b64decode(main.split(",", 1)[1]).decode())
    table = _text(_render(chromium, shown.as_uri(), tmp_path / "frame"))
    rows = [line for line in table.split(" | ") if line.strip()]
    for setting in SETTINGS:
        assert sum(cell == setting for cell in rows) == len(SAMPLER_POINTS), setting
    assert "gaussian baseline" in rows and "test split (real, held out)" in rows
    assert "FID ↓ [classifier]" in rows and "IS ↑ [classifier]" in rows and "bits/dim ↓" in rows
    assert "↓ lower is better" in table
    assert len(pages) >= 5  # every table


def test_dry_run_lists_the_expected_jobs_for_the_default_and_a_cifar10_config(tmp_path):
    counts = job_counts(tmp_path, ROOT / "config" / "config.yaml")
    # 4 settings: 4 trainings, each sampled at 4 sampler points (ancestral; DDIM at S = 10, 50; DPM-Solver++ at S = 10)
    # in one shard, 150-image NLL shards over 300 test images.
    assert counts["train"] == 4 and counts["sample"] == 16 and counts["nll"] == 8 and counts["gather_samples"] == 16
    assert counts["fid_is"] == 16 and counts["gather_nll"] == 4 and counts["baseline"] == 2 and counts["report"] == 1

    # the paper's setting: 50,000 samples in shards of 5,000
    counts = job_counts(tmp_path, ROOT / "config" / "cifar10.yaml")
    assert counts["train"] == 1 and counts["sample"] == 10 and counts["nll"] == 10 and counts["fid_is"] == 1
    assert "train_classifier" not in counts


@pytest.mark.parametrize("override,key", [
    ({"sweep": {"schedule": ["cosin"]}}, "schedule"),
    ({"sweep": {"T": [0]}}, "T"),
    ({"train": {"lr": -0.1}}, "lr"),
    ({"dataset": {"name": "cifar10", "path": "/does/not/exist"}}, "dataset.path"),
    ({"dataset": {"name": "digits", "image_size": 7}, "train": {"preset": "tiny"}}, "dataset.image_size"),
    ({"sample": {"shard_size": 75}}, "sample.shard_size"),
    ({"fid_over_training": {"steps": [10, 999999]}}, "fid_over_training.steps"),
    ({"train": {"gpus": 3}}, "train.batch_size"),
    ({"sweep": {"T": [50.0]}}, "config key 'sweep.T': 50.0 is not an integer; write 50"),
    ({"train": {"steps": 60.0}}, "config key 'train.steps': 60.0 is not an integer"),
    ({"sample": {"num_samples": "200.5"}}, "config key 'sample.num_samples': '200.5' is not an integer"),
    ({"train": {"batch_size": 1000000}}, "config key 'train.batch_size': 1000000 is more than the train split"),
    ({"evaluate": {"nll_num_images": 100000}}, "'evaluate.nll_num_images': 100000 is more than the test split of "
                                               "digits has (300 images)"),
    ({"evaluate": {"nll_train_images": 1500}}, "'evaluate.nll_train_images': 1500 is more than the train split"),
    ({"sampling": [{"sampler": "ddim", "eta": 1.5}]}, "eta"),
    ({"sampling": [{"sampler": "ancestral", "eta": 0.5}]}, "config key 'sampling[0].eta': η is DDIM's"),
    ({"sampling": [{"sampler": "ddim", "steps": [10, 51]}]}, "'sampling[0].steps': S = 51 is more than the T = 50"),
    ({"sampling": [{"sampler": "plms"}]}, "plms"),
    ({"sampling": [{"sampler": "ddim", "skip": "cubic"}]}, "cubic"),
])
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, override, key):
    config = yaml.safe_load(TINY.read_text())
    for section, values in override.items():
        config[section] = values if isinstance(values, list) else {**config.get(section, {}), **values}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "1", config=bad, check=False)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_numbers_written_as_text_and_documented_overrides_are_taken_as_numbers(tmp_path):
    """YAML 1.1 reads ``1e-3`` as text: taken as the number, with a hint. ``--config 'train={steps: 61}'`` (what
    config/README.md shows for a nested key; Snakemake reads its values as text) overrides one key of a section."""
    config = yaml.safe_load(TINY.read_text())
    text = TINY.read_text().replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text and yaml.safe_load(text)["train"]["lr"] == "1e-3"
    written = tmp_path / "as-text.yaml"
    written.write_text(text)
    result = snakemake(tmp_path, "-n", "-p", "--config", "train={steps: 61, flip: true}", "sweep={T: [70]}",
                       config=written)
    assert "config key 'train.lr': YAML reads 1e-3 as text" in result.stderr and "1.0e-3" in result.stderr
    commands = [line for line in result.stdout.splitlines() if " train --out " in line]
    assert len(commands) == len(config["sweep"]["schedule"])
    for command in commands:
        assert "--lr 0.001 " in command and "--steps 61 " in command and "--flip true " in command
        assert "--T 70 " in command and f"--batch-size {config['train']['batch_size']} " in command


def test_an_image_folder_without_class_subfolders_needs_another_extractor(tmp_path):
    from PIL import Image

    folder = tmp_path / "flat images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / f"{i}.png")
    config = yaml.safe_load(TINY.read_text())
    config["dataset"] = {"name": "imagefolder", "path": str(folder), "image_size": 8}
    config["evaluate"]["nll_num_images"] = 1
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", config=flat, check=False)
    assert result.returncode != 0
    assert "config key 'evaluate.feature_extractor'" in result.stdout and "inception-v3-compat" in result.stdout
    config["evaluate"]["feature_extractor"] = "inception-v3-compat"
    flat.write_text(yaml.safe_dump(config))
    assert snakemake(tmp_path, "-n", config=flat).returncode == 0


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", check=False)
    assert "Lints for" not in result.stdout + result.stderr, result.stdout[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# Incremental reruns, in a copy of the finished tiny run (a moved project: the tests after them see the run as it was)


def _tiny_with(tmp_path: Path, name: str, **sections) -> Path:
    config = yaml.safe_load(TINY.read_text())
    for section, values in sections.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _parents(tiny_run):
    _, _, runs = _store(tiny_run)
    return [r for r in runs if r.data.tags.get("ddpm.kind") == "sweep"], \
        [r for r in runs if r.data.tags.get("ddpm.kind") == "setting"]


def _planned(tiny_run: Path, config: Path, snakefile: Path) -> dict[str, int]:
    """Jobs per rule that ``snakemake -n`` plans in the finished tiny run for ``config`` (without the total)."""
    counts = job_counts(tiny_run, config, snakefile=snakefile)
    counts.pop("total", None)
    return counts


def test_a_rerun_plans_only_what_the_change_touches_and_reuses_the_parent_run(tiny_run, tmp_path):
    snakefile = _snakefile(tiny_run)
    finished, tiny_run = tiny_run, tmp_path / "copied run"
    shutil.copytree(finished, tiny_run, symlinks=True)  # modification times kept: Snakemake sees a finished run
    # (c) the same config: nothing to do
    assert _planned(tiny_run, TINY, snakefile) == {}
    # (b) a report-only key: the report alone
    published = tmp_path / "published copy.csv"
    shutil.copy(ROOT / "config" / "published.csv", published)
    report_only = _tiny_with(tmp_path, "report-only", published=str(published))
    assert _planned(tiny_run, report_only, snakefile) == {"report": 1, "all": 1}
    # keys that change no result: the logging and checkpoint cadence no training (the report, quick, stores the
    # resolved config with the sweep's run), the grid's size the grids alone
    cadence = _tiny_with(tmp_path, "cadence", train={"log_every": 7, "checkpoint_every": 9, "preview_every": 0})
    assert _planned(tiny_run, cadence, snakefile) == {"report": 1, "all": 1}
    grid = _tiny_with(tmp_path, "grid", sample={"grid_size": 16})
    assert _planned(tiny_run, grid, snakefile) == {"sample_grid": len(SETTINGS) * len(SAMPLER_POINTS), "all": 1}
    # (a) one more setting: its own jobs and the report; no finished setting trains again
    more = _tiny_with(tmp_path, "more", published=str(published),
                      sweep={"schedule": ["linear", "cosine", "quad"], "T": [50]})
    assert _planned(tiny_run, more, snakefile) == {
        "train": 1, "sample": 4, "gather_samples": 2, "sample_grid": 2, "fid_is": 2, "nll": 2, "gather_nll": 1,
        "progressive": 1,
        "interpolate": 1, "report": 1, "all": 1}

    (parent,), _ = _parents(tiny_run)
    snakemake(tiny_run, "--cores", "2", config=more, snakefile=snakefile)
    assert _planned(tiny_run, more, snakefile) == {}
    parents, children = _parents(tiny_run)
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # reused, not duplicated
    assert parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted(SETTINGS + ["quad-T50-eps-fixedlarge-mse-s0"])
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    table = pd.read_csv(tiny_run / "results" / "tables" / "tiny.csv")
    assert "quad-T50-eps-fixedlarge-mse-s0" in set(table["setting"])
    # Each training's tries log holds its one try: nothing ran again.
    tries = (tiny_run / "results" / "logs" / "tiny" / "train" / f"{SETTINGS[0]}.tries.log").read_text()
    assert tries.count(f"== ddpm train {SETTINGS[0]}: started") == 1


def test_tracking_init_run_again_reuses_the_sweeps_parent_run(tmp_path):
    """``ddpm track init`` a second time (its file lost, the store kept) finds the parent run: never a second one."""
    from ddpm.cli import main

    results = tmp_path / "results"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    for out, config in ((first, {"a": 1}), (second, {"a": 2})):
        assert main(["track", "init", "--experiment", "x", "--results", str(results), "--config-json",
                     json.dumps(config), "--out", str(out)]) == 0
    assert json.loads(first.read_text()) == json.loads(second.read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == json.loads(first.read_text())["parent_run_id"]
    local = client.download_artifacts(runs[0].info.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"a": 2}  # the newest config


def test_tracking_init_stores_the_metrics_view_and_keeps_a_description_the_user_wrote(tmp_path):
    """The experiment gets the saved view (MLflow 3's envelope: name, times, the state as a JSON string), its kind and
    a description linking the view; run again, the view is renewed but a description the user wrote stays."""
    from mlflow.tracking import MlflowClient

    from ddpm.cli import main
    from ddpm.tracking_view import EXPERIMENT_KIND_TAG, VIEW_KEY, VIEW_NAME, view_url

    def init() -> None:
        assert main(["track", "init", "--experiment", "x", "--results", str(tmp_path / "results"), "--out",
                     str(tmp_path / "t.json")]) == 0

    init()
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("x")
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    assert view["name"] == VIEW_NAME and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["orderByKey"] == "metrics.`fid`" and state["orderByAsc"] is True
    columns = state["selectedColumns"]
    assert [c for c in columns if c.startswith("metrics.")][:5] == [
        "metrics.`fid`", "metrics.`fid_se`", "metrics.`is_mean`", "metrics.`kid_mean`", "metrics.`bpd`"]
    assert columns[:3] == ["params.`sampler`", "params.`S`", "params.`eta`"]  # the point, then its scores
    assert "params.`schedule`" in columns and "params.`T`" in columns
    assert experiment.tags[EXPERIMENT_KIND_TAG[0]] == EXPERIMENT_KIND_TAG[1]
    assert view_url(experiment.experiment_id) in experiment.tags["mlflow.note.content"]
    client.set_experiment_tag(experiment.experiment_id, "mlflow.note.content", "my notes")
    init()
    tags = client.get_experiment(experiment.experiment_id).tags
    assert tags["mlflow.note.content"] == "my notes" and f"mlflow.sharedViewState.{VIEW_KEY}" in tags
