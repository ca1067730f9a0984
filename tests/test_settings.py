"""A setting is data: its axes as fields, its name made from them, setting.json in its folder, and reports that
read the axes from that file (never from the name)."""

import dataclasses
import json

import pytest
from conftest import write_point_scores

from ddpm.report.figures import plot_schedules
from ddpm.report.tables import build_table
from ddpm.settings import SETTING_FILE, SWEEP_AXES, Setting, TrainConfig, expand_sweep, read_setting, write_setting


def test_the_name_is_the_axes_labels_in_field_order():
    assert Setting().name == "linear-T1000-eps-fixedlarge-mse-s0"
    assert Setting("cosine", 4000, "eps", "learned_range", "hybrid", 3).name == "cosine-T4000-eps-learned_range-hybrid-s3"
    assert SWEEP_AXES == ("schedule", "T", "mean_type", "var_type", "loss_type", "seed")


def test_a_training_config_knows_its_setting_and_shares_its_defaults():
    config = TrainConfig(schedule="quad", T=50, seed=2, lr=1e-3)
    assert Setting.from_dict(dataclasses.asdict(config)) == Setting(schedule="quad", T=50, seed=2)
    assert {axis: getattr(TrainConfig(), axis) for axis in SWEEP_AXES} == Setting().axes()
    with pytest.raises(ValueError, match="missing: T, seed"):
        Setting.from_dict({"schedule": "linear", "mean_type": "eps", "var_type": "fixedlarge", "loss_type": "mse"})


def test_an_added_axis_is_one_field_and_shows_in_the_name():
    """What adding an axis takes of this class: a field with its label (the schema entry and its use aside)."""
    widened = dataclasses.make_dataclass(
        "WidenedSetting", [("ema", float, dataclasses.field(default=0.9999, metadata={"label": "ema{}"}))],
        bases=(Setting,), frozen=True)
    assert widened(ema=0.999).name == "linear-T1000-eps-fixedlarge-mse-s0-ema0.999"


def test_setting_json_round_trips_and_names_itself(tmp_path):
    setting = Setting("cosine", 50, "xprev", "fixedsmall", "kl", 1)
    path = write_setting(tmp_path, setting)
    assert path == tmp_path / SETTING_FILE
    assert json.loads(path.read_text()) == {"name": setting.name, **setting.axes()}
    assert read_setting(tmp_path) == setting


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the setting"),
    ("{not json", "cannot read the setting"),
    (json.dumps({"name": "x", "schedule": "linear"}), "missing: T, mean_type"),
    (json.dumps({**Setting().axes(), "name": "linear-T50-eps-fixedlarge-mse-s0"}), "but its axes make"),
])
def test_a_missing_or_bad_setting_json_is_refused_naming_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / SETTING_FILE).write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_setting(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_expand_sweep_gives_settings():
    settings = expand_sweep({"sweep": {"schedule": ["linear", "cosine"], "T": [50], "mean_type": ["eps"],
                                       "var_type": ["fixedlarge"], "loss_type": ["mse"], "seed": [0, 1]}})
    assert [s.name for s in settings] == ["linear-T50-eps-fixedlarge-mse-s0", "linear-T50-eps-fixedlarge-mse-s1",
                                          "cosine-T50-eps-fixedlarge-mse-s0", "cosine-T50-eps-fixedlarge-mse-s1"]
    assert all(isinstance(s, Setting) for s in settings)


def _scored(folder, setting: Setting | None):
    folder.mkdir()
    write_point_scores(folder, {"fid": 5.0, "is_mean": 2.0, "is_std": 0.1, "kid_mean": 0.0, "precision": 0.5,
                                "recall": 0.5, "num_samples": 10, "extractor": "classifier"})
    (folder / "nll.json").write_text(json.dumps({"bpd": 3.0, "bpd_stderr": 0.1, "num_images": 10,
                                                "prior_bpd": 1e-5}))
    (folder / "metrics.jsonl").write_text("")
    if setting is not None:
        write_setting(folder, setting)
    return folder


def test_the_report_reads_the_axes_from_setting_json_not_from_the_name(tmp_path):
    """A folder whose name is no setting name at all: the table's axes are those of its setting.json."""
    setting = Setting("quad", 20, "xstart", "fixedsmall", "kl", 4)
    table = build_table({setting.name: _scored(tmp_path / "run a", setting)}, {})
    assert table.loc[0, ["schedule", "T", "mean_type", "var_type", "loss_type", "seed"]].tolist() == \
        ["quad", 20, "xstart", "fixedsmall", "kl", 4]
    plot_schedules({setting.name: tmp_path / "run a"}, tmp_path / "schedules.png")
    assert (tmp_path / "schedules.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_refuses_a_run_whose_setting_json_is_another_settings_or_missing(tmp_path):
    other = _scored(tmp_path / "b", Setting(schedule="cosine"))
    with pytest.raises(ValueError, match="records the setting cosine-T1000-eps-fixedlarge-mse-s0, but the run is "
                                         "reported as linear-T1000-eps-fixedlarge-mse-s0"):
        build_table({Setting().name: other}, {})
    with pytest.raises(ValueError, match="cannot read the setting"):
        build_table({Setting().name: _scored(tmp_path / "c", None)}, {})
