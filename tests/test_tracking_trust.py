"""A project keeps to its own MLflow store: copied or moved, its jobs write into its own store and artifacts, never
the original's. A deleted experiment or run is named, before any work, with the command that restores it, and after
that command the job goes on in the same runs (nothing trained again). MLflow compares the sampler points by every
axis: each point's run carries the setting's axes and the point as params, run names tell the runs apart, a score
lives on one run, and the saved runs view groups the points by sampler and charts FID against S (seen in Chromium).

The store is made by the real code paths (``ddpm track init``, ``start_setting_run``, ``ddpm evaluate fid`` and
``nll-gather``); only the scoring itself (``write_scores``) is replaced by given numbers, so that no model is needed."""

import hashlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import ddpm.evaluate
from conftest import mlflow_server
from ddpm import tracking as mlf
from ddpm.cli import main
from ddpm.gather import NLL_SHARD_KEYS
from ddpm.settings import SWEEP_AXES, Setting, write_setting
from ddpm.samplers import SamplerPoint, write_sampler
from ddpm.tracking_view import RUN_NAME_COLUMN, RUN_NAME_WIDTH, VIEW_GROUP_PARAM, view_url

SWEEP = "trust"
SETTINGS = [Setting("linear", 50), Setting("cosine", 50)]
#: The sweep's sampler points, the first each setting's own (``--primary``): one on every step, two DDIM curves.
POINTS = [SamplerPoint(), SamplerPoint("ddim", 10, eta=0.0), SamplerPoint("ddim", 20, eta=0.0),
          SamplerPoint("ddim", 10, eta=0.5), SamplerPoint("ddim", 20, eta=0.5)]
TRAINING_STEPS = 200


def tracking_file(results: Path) -> Path:
    return results / "tracking" / f"{SWEEP}.json"


def run_dir(results: Path, setting: Setting) -> Path:
    return results / "runs" / SWEEP / setting.name


def store_of(results: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def make_project(root: Path, settings=SETTINGS) -> Path:
    """A project's results folder as training leaves it for MLflow: the store, experiment and parent run (``ddpm track
    init``), and per setting its run (``start_setting_run``, with a loss curve) and folder (setting.json,
    mlflow_run_id.txt). Returns the results folder."""
    results = root / "results"
    assert main(["track", "init", "--experiment", SWEEP, "--results", str(results), "--out",
                 str(tracking_file(results))]) == 0
    info = mlf.read_tracking(tracking_file(results))
    for setting in settings:
        folder = run_dir(results, setting)
        write_setting(folder, setting)
        run_id = mlf.start_setting_run(info, setting.name, {**setting.axes(), "steps": TRAINING_STEPS})
        mlf.log_metrics(info["tracking_uri"], run_id, {"loss": 0.1}, step=TRAINING_STEPS)
        mlf.finish_run(info["tracking_uri"], run_id)
        (folder / "mlflow_run_id.txt").write_text(run_id + "\n")
    return results


def fid_of(setting: Setting, point: SamplerPoint) -> float:
    """A made-up FID, different for every (setting, point), falling with S."""
    return 100.0 / point.num_steps(setting.T) + 5 * (point.eta or 0) + SETTINGS.index(setting) + len(point.name) / 100


def score_point(monkeypatch, results: Path, setting: Setting, point: SamplerPoint, work=None) -> tuple[int, Path]:
    """``ddpm evaluate fid`` of one sampler point as the workflow runs it (its sampler.json, grid, ``--primary`` for
    the first point, the training step), its scoring replaced by :func:`fid_of`'s numbers (or by ``work``).
    Returns the exit status and the scores' path."""
    folder = run_dir(results, setting) / "samplers" / point.name
    write_sampler(folder, point)
    np.savez(folder / "samples.npz", images=np.zeros((1, 1, 2, 2), dtype=np.uint8))
    Image.new("RGB", (8, 8), "white").save(folder / "samples.png")
    scores = {"fid": fid_of(setting, point), "fid_se": 0.1, "is_mean": 2.0 + point.num_steps(setting.T) / 100,
              "kid_mean": 0.01, "network_evaluations": point.num_steps(setting.T), "sampling_images_per_s": 10.0,
              "training_step": TRAINING_STEPS, "num_samples": 16, "extractor": "classifier"}
    monkeypatch.setattr(ddpm.evaluate, "write_scores", work or (lambda *args, **kwargs: scores))
    out = results.parent / "scores" / setting.name / f"{point.name}.json"
    code = main(["evaluate", "fid", "--samples", str(folder / "samples.npz"), "--data", str(results),
                 "--setting", setting.name, "--training-step", str(TRAINING_STEPS), "--out", str(out),
                 "--tracking", str(tracking_file(results)), "--run-id-file",
                 str(run_dir(results, setting) / "mlflow_run_id.txt"), "--sampler-file",
                 str(folder / "sampler.json"), "--grid", str(folder / "samples.png")]
                + (["--primary"] if point == POINTS[0] else []))
    return code, out


def gather_nll(results: Path, setting: Setting) -> tuple[int, Path]:
    """``ddpm evaluate nll-gather`` of a setting, logging its bits/dim to the setting's run."""
    shard = results.parent / "shards" / setting.name / "shard-0.npz"
    shard.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(zip(NLL_SHARD_KEYS, (np.arange(4), np.array([3.0, 3.5, 4.0, 4.5]), np.zeros(4), np.ones(5),
                                       np.ones(5), np.array("exact"))))
    np.savez(shard, **arrays)
    out = shard.parent / "nll.json"
    code = main(["evaluate", "nll-gather", "--shards", str(shard), "--out", str(out), "--tracking",
                 str(tracking_file(results)), "--run-id-file", str(run_dir(results, setting) / "mlflow_run_id.txt")])
    return code, out


def files_and_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def runs_of(results: Path, kind: str | None = None) -> list:
    client = store_of(results)
    experiment = client.get_experiment_by_name(SWEEP)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if kind is None or r.data.tags.get("ddpm.kind") == kind]


def test_the_tracking_file_names_the_results_folder_relative_to_itself(tmp_path):
    results = make_project(tmp_path / "project")
    text = tracking_file(results).read_text()
    assert str(tmp_path) not in text and "sqlite" not in text, text
    info = mlf.read_tracking(tracking_file(results))
    assert info["tracking_uri"] == f"sqlite:///{(results / 'mlflow.db').resolve()}"


def test_a_store_the_user_gave_is_kept_as_given(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "store.db"
    elsewhere.parent.mkdir()
    results = tmp_path / "project" / "results"
    assert main(["track", "init", "--experiment", SWEEP, "--results", str(results), "--tracking-uri",
                 f"sqlite:///{elsewhere}", "--out", str(tracking_file(results))]) == 0
    assert mlf.read_tracking(tracking_file(results))["tracking_uri"] == f"sqlite:///{elsewhere}"
    assert elsewhere.exists() and not (results / "mlflow.db").exists()


def test_a_copied_project_writes_only_into_its_own_store_and_artifacts(tmp_path, monkeypatch, capsys):
    original = make_project(tmp_path / "original")
    assert score_point(monkeypatch, original, SETTINGS[0], POINTS[0])[0] == 0  # an artifact in the original
    copy = tmp_path / "copy" / "results"
    shutil.copytree(original, copy)
    before = files_and_hashes(original)
    assert gather_nll(copy, SETTINGS[0])[0] == 0
    assert score_point(monkeypatch, copy, SETTINGS[0], POINTS[1])[0] == 0
    assert score_point(monkeypatch, copy, SETTINGS[1], POINTS[0])[0] == 0
    assert "this one was copied or moved" in capsys.readouterr().err
    assert files_and_hashes(original) == before  # its database byte for byte, and not one artifact more
    setting_run = next(r for r in runs_of(copy, "setting") if r.info.run_name == SETTINGS[0].name)
    assert setting_run.data.metrics["bpd"] == pytest.approx(3.75)
    points = runs_of(copy, "sampler")
    assert len(points) == 3
    client = store_of(copy)
    for run in points:
        assert run.info.artifact_uri.startswith(f"{copy.resolve().as_uri()}/mlartifacts/"), run.info.artifact_uri
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["samples.png"]
    assert client.get_experiment_by_name(SWEEP).artifact_location == (copy / "mlartifacts").resolve().as_uri()


def test_a_moved_project_works_and_writes_nothing_at_its_old_place(tmp_path, monkeypatch):
    old = make_project(tmp_path / "old place")
    assert score_point(monkeypatch, old, SETTINGS[0], POINTS[0])[0] == 0
    new = tmp_path / "new place ü" / "results"
    new.parent.mkdir()
    shutil.move(old, new)
    assert gather_nll(new, SETTINGS[0])[0] == 0
    assert score_point(monkeypatch, new, SETTINGS[0], POINTS[1])[0] == 0
    assert not old.exists()
    assert {r.info.run_name: r.data.metrics.get("bpd") for r in runs_of(new, "setting")}[SETTINGS[0].name] == 3.75
    client = store_of(new)
    for run in runs_of(new, "sampler"):  # the point scored before the move too: its artifacts moved with it
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["samples.png"]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "Traceback" not in "\n".join(lines)
    return lines[-1]


def _restore(error: str) -> None:
    """Run the command the error names (between backquotes), as a person would paste it into a shell."""
    command = error.split("`")[-2]
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_deleted_experiment_is_named_with_its_restore_command_before_any_work(tmp_path, monkeypatch, capsys):
    results = make_project(tmp_path / "project")
    client = store_of(results)
    experiment = client.get_experiment_by_name(SWEEP)
    settings_before = {r.info.run_name: r.info.run_id for r in runs_of(results, "setting")}
    client.delete_experiment(experiment.experiment_id)  # as the UI's "Delete"
    uri = mlf.read_tracking(tracking_file(results), check=False)["tracking_uri"]

    def work(*args, **kwargs):
        raise AssertionError("scored, though the experiment is deleted")

    for job in (lambda: gather_nll(results, SETTINGS[0]), lambda: score_point(monkeypatch, results, SETTINGS[0],
                                                                              POINTS[1], work)):
        code, out = job()
        error = _error(capsys)
        assert code == 2 and not out.exists(), error
        assert f"experiment '{SWEEP}' (id {experiment.experiment_id})" in error and "is deleted" in error, error
        assert (f"MLFLOW_TRACKING_URI={shlex.quote(uri)} " in error
                and f"-m mlflow experiments restore --experiment-id {experiment.experiment_id}`" in error), error
    assert main(["track", "init", "--experiment", SWEEP, "--results", str(results), "--out",
                 str(tmp_path / "again.json")]) == 2
    assert f"mlflow experiments restore --experiment-id {experiment.experiment_id}" in _error(capsys)
    _restore(error)
    assert gather_nll(results, SETTINGS[0])[0] == 0
    assert score_point(monkeypatch, results, SETTINGS[0], POINTS[1])[0] == 0
    settings = {r.info.run_name: r for r in runs_of(results, "setting")}
    assert {name: run.info.run_id for name, run in settings.items()} == settings_before  # the same runs, not new
    assert settings[SETTINGS[0].name].data.metrics["loss"] == 0.1 and "bpd" in settings[SETTINGS[0].name].data.metrics


@pytest.mark.parametrize("deleted", ["setting", "sampler", "sweep"])
def test_a_deleted_run_is_named_with_its_restore_command_before_any_work(tmp_path, monkeypatch, capsys, deleted):
    results = make_project(tmp_path / "project")
    assert score_point(monkeypatch, results, SETTINGS[0], POINTS[1])[0] == 0
    (run,) = [r for r in runs_of(results, deleted) if deleted == "sweep" or SETTINGS[0].name in r.info.run_name
              and (deleted == "setting" or r.data.tags["ddpm.sampler"] == POINTS[1].name)]
    store_of(results).delete_run(run.info.run_id)
    uri = mlf.read_tracking(tracking_file(results), check=False)["tracking_uri"]
    calls = []
    code, out = score_point(monkeypatch, results, SETTINGS[0], POINTS[1], lambda *a, **k: calls.append(a))
    error = _error(capsys)
    assert code == 2 and not calls and not out.exists(), error
    assert f"{run.info.run_name!r} (id {run.info.run_id}) is deleted" in error, error
    assert f"MLFLOW_TRACKING_URI={shlex.quote(uri)} " in error, error
    assert f"-m mlflow runs restore --run-id {run.info.run_id}`" in error, error
    _restore(error)
    assert score_point(monkeypatch, results, SETTINGS[0], POINTS[1])[0] == 0
    assert run.info.run_id in {r.info.run_id for r in runs_of(results, deleted)}  # restored, not replaced
    assert len(runs_of(results)) == 1 + len(SETTINGS) + 1


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Both settings scored at every sampler point, their bits/dim gathered."""
    results = make_project(tmp_path_factory.mktemp("sweep"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        for setting in SETTINGS:
            assert gather_nll(results, setting)[0] == 0
            for point in POINTS:
                assert score_point(monkeypatch, results, setting, point)[0] == 0
    return results


def test_a_sampler_points_run_carries_the_settings_axes_and_the_point(sweep):
    points = runs_of(sweep, "sampler")
    assert len(points) == len(SETTINGS) * len(POINTS)
    for run in points:
        setting = next(s for s in SETTINGS if run.data.tags["ddpm.setting"] == s.name)
        point = next(p for p in POINTS if run.data.tags["ddpm.sampler"] == p.name)
        params = run.data.params
        assert {axis: params[axis] for axis in SWEEP_AXES} == {k: str(v) for k, v in setting.axes().items()}
        assert params["sampler"] == point.sampler and params["S"] == str(point.num_steps(setting.T))
        assert params["skip"] == point.skip and params["clip"] == str(point.clip)
        assert params.get("eta") == (None if point.eta is None else str(point.eta))  # only DDIM takes η
        assert params.get("variance") == point.variance  # only the ancestral sampler takes σ²
        assert params["sampler_curve"] == mlf.sampler_curve(point) and "S" not in params["sampler_curve"].split("-")


def test_run_names_tell_the_runs_apart_the_point_first(sweep):
    runs = runs_of(sweep)
    assert len({r.info.run_name for r in runs}) == len(runs)
    shown = 24  # about what MLflow's run-name column shows at its own width (190 px)
    for setting in SETTINGS:
        names = [r.info.run_name for r in runs if r.data.tags.get("ddpm.setting") == setting.name
                 and r.data.tags["ddpm.kind"] == "sampler"]
        assert all(any(name.startswith(p.name + " ") for p in POINTS) for name in names), names
        assert len({name[:shown] for name in names}) == len(POINTS), names


def test_a_score_lives_on_one_run(sweep):
    client = store_of(sweep)
    runs = runs_of(sweep)
    for setting in SETTINGS:
        for point in POINTS:
            holding = [r for r in runs if r.data.metrics.get("fid") == pytest.approx(fid_of(setting, point))]
            assert [r.data.tags["ddpm.kind"] for r in holding] == ["sampler"], [r.info.run_name for r in holding]
            history = client.get_metric_history(holding[0].info.run_id, "fid")
            assert [m.step for m in history] == [point.num_steps(setting.T)]  # at step S: MLflow draws it against S
    assert sum("fid" in r.data.metrics for r in runs) == len(SETTINGS) * len(POINTS)
    for run in runs_of(sweep, "setting"):  # its training, its bits/dim, and the last point of FID over training
        assert not {"fid", "is_mean", "kid_mean", "network_evaluations"} & set(run.data.metrics), run.data.metrics
        assert {"loss", "bpd", "fid_over_training"} <= set(run.data.metrics)
        setting = next(s for s in SETTINGS if s.name == run.info.run_name)
        assert run.data.metrics["fid_over_training"] == pytest.approx(fid_of(setting, POINTS[0]))
        assert not client.list_artifacts(run.info.run_id)  # the samples' grids are the points'


def _render(chromium: str, url: str, profile: Path, screenshot: Path) -> str:
    """The page at ``url`` after its scripts ran (headless Chromium, as tests/test_pipeline.py renders the UI), and a
    1920×1080 screenshot of it."""
    options = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--window-size=1920,1080"]
    subprocess.run([*options, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    return subprocess.run([*options, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


def test_the_runs_view_in_chromium_groups_by_sampler_and_charts_fid_against_S(sweep, tmp_path):
    from test_pipeline import _chromium, _text

    chromium = _chromium()
    experiment = store_of(sweep).get_experiment_by_name(SWEEP)
    curves = sorted({mlf.sampler_curve(p) for p in POINTS})
    with mlflow_server(sweep / "mlflow.db") as url:
        page = _render(chromium, f"{url}/{view_url(experiment.experiment_id)}", tmp_path / "table",
                       tmp_path / "runs-table.png")
        charts = _text(_render(chromium, f"{url}/{view_url(experiment.experiment_id)}&compareRunsMode=CHART",
                               tmp_path / "charts", tmp_path / "runs-charts.png"))
    table = _text(page)
    assert "You're viewing a shared view" in table and "Sort: fid" in table, table[:3000]
    assert f"Group by: {VIEW_GROUP_PARAM}" in table, table[:3000]
    assert all(f"Group: {curve}" in table for curve in curves), table[:5000]
    assert all(r.info.run_name in table for r in runs_of(sweep, "sampler"))
    # The grid's header cells in the order it shows them (not its DOM order); columns out of sight are not drawn.
    columns = {column: (int(index), style) for index, column, style in
               re.findall(r'aria-colindex="(\d+)" col-id="([^"]+)"[^>]*style="([^"]*)"', page)}
    shown = sorted(columns, key=lambda column: columns[column][0])
    point_columns = [f"params.`{name}`" for name in ("sampler", "S", "eta")]
    assert [c for c in shown if c in point_columns] == point_columns, shown
    assert shown.index("params.`eta`") < shown.index("metrics.`fid`"), shown  # the point first, then its scores
    assert f"width: {RUN_NAME_WIDTH}px" in columns[RUN_NAME_COLUMN][1], columns  # names not cut alike
    section = charts[charts.index("FID and IS against S, one line per sampler"):]
    fid_chart = section[section.index("| fid |"):section.index("| is_mean |")]
    assert "Step" in fid_chart and all(f"{curve} (fid)" in fid_chart for curve in curves), fid_chart
    for screenshot in ("runs-table.png", "runs-charts.png"):  # kept for a person to look at
        image = Image.open(tmp_path / screenshot).convert("RGB")
        assert image.size == (1920, 1080) and len(image.getcolors(1 << 16) or range(1 << 16)) > 50, screenshot


def test_a_grid_drawn_again_replaces_the_one_on_the_point_s_run_and_none_is_made_before_it(monkeypatch, tmp_path):
    """``ddpm grid`` (rule sample_grid, rerun alone when sample.grid_size changes): before the point's FID job it
    logs nothing and does not open MLflow (that job makes the run and logs the grid); after it, the new grid
    replaces the run's."""
    results = make_project(tmp_path)
    setting, point = SETTINGS[0], POINTS[1]
    folder = run_dir(results, setting) / "samplers" / point.name
    setting_run = (run_dir(results, setting) / "mlflow_run_id.txt").read_text().strip()
    scores = tmp_path / "point-scores.json"
    grid = ["grid", "--samples", str(tmp_path / "drawn.npz"), "--out", str(folder / "samples.png"),
            "--grid-size", "4", "--sampler-file", str(folder / "sampler.json"), "--scores", str(scores), "--tracking",
            str(tracking_file(results)), "--run-id-file", str(run_dir(results, setting) / "mlflow_run_id.txt")]
    write_sampler(folder, point)
    np.savez(tmp_path / "drawn.npz", images=np.full((9, 1, 2, 2), 200, dtype=np.uint8))

    def no_store(*args, **kwargs):
        raise AssertionError("MLflow opened before the point was scored")

    with monkeypatch.context() as patch:
        patch.setattr(mlf, "read_tracking", no_store)
        assert main(grid) == 0
    assert mlf.find_sampler_run(mlf.read_tracking(tracking_file(results)), setting_run, point.name) is None
    code, _ = score_point(monkeypatch, results, setting, point)  # logs its own (white) samples.png
    assert code == 0
    scores.touch()  # what the FID job writes (its scoring is replaced here)
    run = mlf.find_sampler_run(mlf.read_tracking(tracking_file(results)), setting_run, point.name)
    client = store_of(results)
    scored = Path(client.download_artifacts(run.info.run_id, "samples.png", str(tmp_path / "scored")))
    assert main(grid) == 0  # another grid size
    redrawn = Path(client.download_artifacts(run.info.run_id, "samples.png", str(tmp_path / "redrawn")))
    assert redrawn.read_bytes() == (folder / "samples.png").read_bytes() != scored.read_bytes()
    assert [a.path for a in client.list_artifacts(run.info.run_id)].count("samples.png") == 1
