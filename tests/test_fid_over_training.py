"""FID over training: EMA snapshots at configured steps, their scores, the curve and the best checkpoint."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import record_settings, write_point_scores

from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.io import load_npz
from ddpm.report.figures import plot_fid_over_training
from ddpm.report.tables import best_checkpoints, build_table, fid_over_training_table, paper_table
from ddpm.paper import load_published
from ddpm.checkpoint import load_for_sampling, snapshot_path
from ddpm.provenance import Diverged
from ddpm.settings import TrainConfig
from ddpm.train import train

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "config" / "published.csv"
CONFIG = dict(T=50, batch_size=16, log_every=2, warmup=2, checkpoint_every=0)


def test_a_snapshot_holds_the_ema_weights_of_a_run_that_stopped_at_its_step(tmp_path):
    train(TrainConfig(steps=6, **CONFIG), tmp_path / "long", progress=False, snapshot_steps=[4, 2])
    train(TrainConfig(steps=4, **CONFIG), tmp_path / "short", progress=False)
    snapshot, short = load_checkpoint(snapshot_path(tmp_path / "long", 4)), load_checkpoint(tmp_path / "short" / "checkpoint.pt")
    assert snapshot["step"] == 4 and snapshot["model"] == {} and snapshot["ema_only"]
    for key, weight in short["ema"].items():  # the loop does not depend on its length: the same EMA, bit for bit
        assert torch.equal(snapshot["ema"][key], weight), key
    assert snapshot_path(tmp_path / "long", 2).is_file() and not (tmp_path / "long" / "snapshots-pending").exists()
    final = load_checkpoint(tmp_path / "long" / "checkpoint.pt")["ema"]
    assert any(not torch.equal(final[k], snapshot["ema"][k]) for k in final)  # training went on after it
    model, _, state = load_for_sampling(snapshot_path(tmp_path / "long", 4))
    assert state["step"] == 4
    with pytest.raises(ValueError, match="holds only the EMA weights"):
        load_for_sampling(snapshot_path(tmp_path / "long", 4), use_ema=False)


@pytest.mark.parametrize("steps", [[6], [0], [3, 7]])
def test_snapshot_steps_outside_the_run_are_refused_before_training(tmp_path, steps):
    with pytest.raises(ValueError, match=r"snapshot steps \[.*\] are not between 1 and the last step \(6\)"):
        train(TrainConfig(steps=6, **CONFIG), tmp_path, progress=False, snapshot_steps=steps)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_diverged_run_keeps_the_snapshots_before_and_marks_those_after(tmp_path, capsys):
    config = TrainConfig(T=20, steps=5, batch_size=8, lr=1e30, warmup=0, grad_clip=0.0, log_every=1)
    result = train(config, tmp_path, progress=False, on_divergence="record", snapshot_steps=[1, 4])
    diverged_at = result["diverged_at_step"]
    assert 1 < diverged_at <= 4
    load_for_sampling(snapshot_path(tmp_path, 1))  # weights from before the divergence
    with pytest.raises(Diverged, match=f"diverged at step {diverged_at}"):
        load_for_sampling(snapshot_path(tmp_path, 4))
    out = tmp_path / "shard.npz"
    assert main(["sample", "--checkpoint", str(snapshot_path(tmp_path, 4)), "--out", str(out), "--count", "2"]) in (0, None)
    assert int(load_npz(out, ("diverged_at_step",))["diverged_at_step"]) == diverged_at


def _scores(fid: float, is_mean: float, n: int = 50000, **extra) -> dict:
    return {"fid": fid, "is_mean": is_mean, "is_std": 0.1, "kid_mean": 0.01, "precision": 0.5, "recall": 0.5,
            "num_samples": n, "extractor": "inception-v3-compat", **extra}


def _run(folder: Path, final: dict, snapshots: dict[int, dict], last_step: int = 30) -> Path:
    folder.mkdir(parents=True)
    write_point_scores(folder, final)
    (folder / "nll.json").write_text(json.dumps({"bpd": 3.8, "bpd_stderr": 0.01, "num_images": 100}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": last_step, "loss": 0.1}) + "\n")
    for step, scores in snapshots.items():
        (folder / "snapshots" / f"step-{step}").mkdir(parents=True)
        (folder / "snapshots" / f"step-{step}" / "fid_is.json").write_text(json.dumps(scores))
    return folder


def test_the_paper_table_takes_is_and_fid_from_the_checkpoint_with_the_lowest_fid(tmp_path):
    runs = record_settings({
        # the snapshot at step 20 has the lowest FID: IS and FID come from it
        "linear-T1000-eps-fixedlarge-mse-s0": _run(tmp_path / "a", _scores(4.0, 9.0, fid_test=6.0),
                                                   {10: _scores(9.0, 7.0, fid_test=11.0), 20: _scores(3.5, 9.3, fid_test=5.5)}),
        # a lower FID from fewer samples is biased, not better: the final checkpoint stays
        "linear-T1000-eps-fixedlarge-kl-s0": _run(tmp_path / "b", _scores(14.0, 7.5, fid_test=15.0),
                                                  {10: _scores(20.0, 7.0, fid_test=21.0), 20: _scores(2.0, 9.9, n=50, fid_test=3.0)}),
    })
    curve = fid_over_training_table(runs, [10, 20])
    assert list(curve["step"]) == [10, 20, 30, 10, 20, 30]
    assert list(curve["checkpoint"]) == ["snapshot", "snapshot", "final"] * 2
    best = best_checkpoints(curve)
    assert best.loc["linear-T1000-eps-fixedlarge-mse-s0", "step"] == 20
    assert best.loc["linear-T1000-eps-fixedlarge-kl-s0", "step"] == 30

    table = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table1", curve=curve)
    lsimple, kl = table.iloc[0], table.iloc[1]
    assert (lsimple["FID"], lsimple["IS"], lsimple["FID test"], lsimple["min-FID step"]) == (3.5, 9.3, 5.5, "20")
    assert lsimple["FID Δ"] == pytest.approx(3.5 - 3.17) and lsimple["bits/dim"] == 3.8  # bits/dim: the final's
    assert (kl["FID"], kl["IS"], kl["min-FID step"]) == (14.0, 7.5, "30")
    without = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table1")
    assert without.iloc[0]["FID"] == 4.0 and "min-FID step" not in without  # no curve: the final checkpoint

    plot_fid_over_training(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_diverged_setting_is_scored_at_its_best_snapshot_before_the_divergence(tmp_path):
    runs = record_settings({"linear-T1000-xprev-fixedlarge-mse-s0": _run(tmp_path / "a", {"diverged_at_step": 25},
                                                         {10: _scores(50.0, 5.0), 20: {"diverged_at_step": 25}})})
    runs["linear-T1000-xprev-fixedlarge-mse-s0"].joinpath("metrics.jsonl").write_text("")  # no logged step
    curve = fid_over_training_table(runs, [10, 20])
    assert list(curve["step"]) == [10]  # the checkpoints that the training never reached have no point
    table = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table2", curve=curve)
    row = table.iloc[0]
    assert row["status"] == "diverged at step 25" and "unstable" in row["paper note"]
    assert (row["FID"], row["min-FID step"]) == (50.0, "10")
    assert pd.isna(row["bits/dim"]) and "bits/dim train" not in table  # no weights at the end; not in Table 2
