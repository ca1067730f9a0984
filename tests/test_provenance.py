"""No silent wrong results: every job refuses files that are not its setting's, its checkpoint's or its data's,
naming both; result files are readable by the group; impossible sizes are refused naming the key."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import record_settings, write_point_scores

from ddpm.provenance import PROVENANCE_KEYS, read_provenance
from ddpm.cli import main
from ddpm.datasets import prepare_dataset, split_sha256
from ddpm.io import load_npz, save_npz
from ddpm.report.tables import build_table
from ddpm.samplers import SamplerPoint
from ddpm.vocabulary import SAMPLE_RECORD

LINEAR = "linear-T10-eps-fixedlarge-mse-s0"
COSINE = "cosine-T10-eps-fixedlarge-mse-s0"


def _train(root: Path, data: Path, setting: str, steps: int = 2) -> Path:
    schedule = setting.split("-")[0]
    out = root / f"{setting}-{steps}"
    assert main(["train", "--out", str(out), "--data", str(data), "--schedule", schedule, "--T", "10",
                 "--steps", str(steps), "--batch-size", "8", "--log-every", "1"]) == 0
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Digits prepared twice (two splits: other training images), and tiny linear and cosine checkpoints."""
    root = tmp_path_factory.mktemp("provenance")
    prepare_dataset("digits", root / "data")
    prepare_dataset("digits", root / "other-data", seed=1)  # the same data set, another train split
    prepare_dataset("digits", root / "data-16px", image_size=16)
    return {"root": root, "data": root / "data", "linear": _train(root, root / "data", LINEAR),
            "cosine": _train(root, root / "data", COSINE), "linear-again": _train(root, root / "data", LINEAR, 3)}


def _sample(runs, checkpoint: Path, out: Path, setting: str = LINEAR, start: int = 0, data=None) -> int:
    return main(["sample", "--checkpoint", str(checkpoint), "--data", str(data or runs["data"]), "--setting", setting,
                 "--out", str(out), "--start", str(start), "--count", "2", "--batch-size", "2"])


def test_checkpoints_record_their_training_data(runs):
    import torch

    state = torch.load(runs["linear"], weights_only=True)
    assert state["data_sha256"] == split_sha256(runs["data"], "train")
    assert split_sha256(runs["data"], "train") != split_sha256(runs["root"] / "other-data", "train")


def test_every_file_made_from_a_checkpoint_records_it(runs, tmp_path):
    assert _sample(runs, runs["linear"], tmp_path / "shard-0.npz") == 0
    assert _sample(runs, runs["linear"], tmp_path / "shard-1.npz", start=2) == 0
    found = read_provenance(tmp_path / "shard-0.npz")
    assert set(found) == set(PROVENANCE_KEYS) and found["setting"] == LINEAR
    assert found["data_sha256"] == split_sha256(runs["data"], "train")
    assert main(["gather-samples", "--shards", str(tmp_path / "shard-0.npz"), str(tmp_path / "shard-1.npz"),
                 "--setting", LINEAR, "--out", str(tmp_path / "samples.npz")]) == 0
    assert read_provenance(tmp_path / "samples.npz") == found
    assert main(["evaluate", "nll", "--checkpoint", str(runs["linear"]), "--data", str(runs["data"]), "--setting",
                 LINEAR, "--count", "2", "--batch-size", "2", "--out", str(tmp_path / "nll-0.npz")]) == 0
    assert main(["evaluate", "nll-gather", "--shards", str(tmp_path / "nll-0.npz"), "--setting", LINEAR,
                 "--out", str(tmp_path / "nll.json")]) == 0
    assert json.loads((tmp_path / "nll.json").read_text())["setting"] == LINEAR


def _job(command: str, runs, checkpoint: Path, out: Path, setting: str = LINEAR, data=None) -> list[str]:
    data = str(data or runs["data"])
    return {
        "sample": ["sample", "--checkpoint", str(checkpoint), "--data", data, "--count", "2", "--batch-size", "2"],
        "nll": ["evaluate", "nll", "--checkpoint", str(checkpoint), "--data", data, "--count", "2", "--batch-size", "2"],
        "progressive": ["progressive", "--checkpoint", str(checkpoint), "--data", data, "--count", "1", "--columns", "2"],
        "interpolate": ["interpolate", "--checkpoint", str(checkpoint), "--data", data],
    }[command] + ["--setting", setting, "--out", str(out)]


@pytest.mark.parametrize("command", ["sample", "nll", "progressive", "interpolate"])
def test_a_checkpoint_of_another_setting_is_refused_naming_both(runs, tmp_path, capsys, command):
    """The user's case: cosine's checkpoint copied over linear's, scored as linear's with rc 0."""
    swapped = tmp_path / LINEAR / "checkpoint.pt"
    swapped.parent.mkdir()
    shutil.copy(runs["cosine"], swapped)
    out = tmp_path / ("out.png" if command in ("progressive", "interpolate") else "out.npz")
    assert main(_job(command, runs, swapped, out)) == 2
    error = capsys.readouterr().err
    assert f"trained as {COSINE}" in error and f"this job is for {LINEAR}" in error and str(swapped) in error
    assert not out.exists()
    assert main(_job(command, runs, runs["cosine"], out, setting=COSINE)) == 0  # the same file, for its own setting


@pytest.mark.parametrize("command", ["sample", "nll"])
def test_a_checkpoint_trained_on_other_data_is_refused_naming_both_checksums(runs, tmp_path, capsys, command):
    out = tmp_path / "out.npz"
    assert main(_job(command, runs, runs["linear"], out, data=runs["root"] / "other-data")) == 2
    error = capsys.readouterr().err
    assert "trained on other data" in error
    assert split_sha256(runs["data"], "train") in error and split_sha256(runs["root"] / "other-data", "train") in error
    assert not out.exists()


def test_a_checkpoint_of_other_image_shapes_is_refused(runs, tmp_path, capsys):
    assert main(_job("sample", runs, runs["linear"], tmp_path / "out.npz", data=runs["root"] / "data-16px")) == 2
    error = capsys.readouterr().err
    assert "shape [1, 8, 8]" in error and "[1, 16, 16]" in error


def test_gather_refuses_shards_of_two_checkpoints_or_of_another_setting(runs, tmp_path, capsys):
    assert _sample(runs, runs["linear"], tmp_path / "a.npz") == 0
    assert _sample(runs, runs["linear-again"], tmp_path / "b.npz", start=2) == 0  # same setting, other training
    out = tmp_path / "samples.npz"
    assert main(["gather-samples", "--shards", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--setting", LINEAR,
                 "--out", str(out)]) == 2
    assert "come from different checkpoints" in capsys.readouterr().err and not out.exists()

    assert _sample(runs, runs["cosine"], tmp_path / "c.npz", setting=COSINE, start=2) == 0
    assert main(["gather-samples", "--shards", str(tmp_path / "a.npz"), str(tmp_path / "c.npz"), "--setting", LINEAR,
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "c.npz") in error and COSINE in error and LINEAR in error and not out.exists()


def test_fid_refuses_samples_of_another_setting_or_other_data(runs, tmp_path, capsys):
    assert _sample(runs, runs["cosine"], tmp_path / "samples.npz", setting=COSINE) == 0
    out = tmp_path / "fid_is.json"
    fid = ["evaluate", "fid", "--samples", str(tmp_path / "samples.npz"), "--out", str(out)]
    assert main([*fid, "--data", str(runs["data"]), "--setting", LINEAR]) == 2
    error = capsys.readouterr().err
    assert f"setting {COSINE}" in error and LINEAR in error and not out.exists()
    assert main([*fid, "--data", str(runs["root"] / "other-data"), "--setting", COSINE]) == 2
    assert split_sha256(runs["data"], "train") in capsys.readouterr().err and not out.exists()


def test_nll_gather_refuses_shards_of_another_setting(runs, tmp_path, capsys):
    assert main(_job("nll", runs, runs["cosine"], tmp_path / "nll-0.npz", setting=COSINE)) == 0
    out = tmp_path / "nll.json"
    assert main(["evaluate", "nll-gather", "--shards", str(tmp_path / "nll-0.npz"), "--setting", LINEAR,
                 "--out", str(out)]) == 2
    assert COSINE in capsys.readouterr().err and not out.exists()


def test_shards_that_record_nothing_are_refused_when_a_setting_is_expected(runs, tmp_path, capsys):
    assert _sample(runs, runs["linear"], tmp_path / "new.npz") == 0
    old = load_npz(tmp_path / "new.npz", ("images", "indices"))  # as written before shards recorded provenance
    save_npz(tmp_path / "old.npz", **old)
    out = tmp_path / "samples.npz"
    assert main(["gather-samples", "--shards", str(tmp_path / "old.npz"), "--setting", LINEAR, "--out", str(out)]) == 2
    assert "does not record its setting" in capsys.readouterr().err and not out.exists()


def test_the_report_refuses_a_result_file_of_another_run(tmp_path):
    folder = tmp_path / LINEAR
    folder.mkdir()
    write_point_scores(folder, {"setting": COSINE, "fid": 1.0})
    (folder / "nll.json").write_text(json.dumps({"setting": LINEAR, "bpd": 1.0}))
    (folder / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=f"records the setting {COSINE}, but it is in the folder of {LINEAR}"):
        build_table({LINEAR: folder}, {})


def test_the_report_refuses_scores_of_another_sampler_point_in_a_points_folder(tmp_path):
    folder = tmp_path / LINEAR
    folder.mkdir()
    write_point_scores(folder, {"setting": LINEAR, "sampler": "ddim-eta0-S10-uniform", "fid": 1.0})
    (folder / "nll.json").write_text(json.dumps({"setting": LINEAR, "bpd": 1.0}))
    (folder / "metrics.jsonl").write_text("")
    record_settings({LINEAR: folder})
    with pytest.raises(ValueError, match="scores samples of the sampler point ddim-eta0-S10-uniform, but it is in "
                                         "the folder of ancestral"):
        build_table({LINEAR: folder}, {})


def test_gathering_refuses_shards_of_another_sampler_point_or_a_mix(runs, tmp_path, capsys):
    ddim = ["--sampler", "ddim", "--steps", "5"]
    ancestral, other = tmp_path / "a.npz", tmp_path / "b.npz"
    assert _sample(runs, runs["linear"], ancestral) == 0
    assert main(["sample", "--checkpoint", str(runs["linear"]), "--out", str(other), "--start", "2", "--count", "2",
                 *ddim]) == 0
    assert read_provenance(other)["sampler"] == SamplerPoint("ddim", 5).name
    gather = ["gather-samples", "--out", str(tmp_path / "samples.npz"), "--sampler-out", str(tmp_path / "sampler.json")]
    assert main([*gather, "--shards", str(other), *ddim, "--steps", "10"]) == 2  # drawn on 5 steps, not 10
    assert "records sampler ddim-eta0-S5-uniform, but this job is for ddim-eta0-S10-uniform" in capsys.readouterr().err
    assert main([*gather, "--shards", str(ancestral), str(other)]) == 2  # a mix, gathered as the ancestral point
    assert "records sampler ddim-eta0-S5-uniform, but this job is for ancestral" in capsys.readouterr().err
    assert main(["gather-samples", "--out", str(tmp_path / "samples.npz"), "--shards", str(ancestral),
                 str(other)]) == 2  # a mix, gathered without saying for which point (the snapshots' gathering)
    assert "come from different sampler points" in capsys.readouterr().err
    assert not (tmp_path / "samples.npz").exists() and not (tmp_path / "sampler.json").exists()


def test_an_empty_checkpoint_says_to_retrain(runs, tmp_path, capsys):
    empty = tmp_path / "checkpoint.pt"
    empty.touch()
    assert main(_job("sample", runs, empty, tmp_path / "out.npz")) == 2
    error = capsys.readouterr().err
    assert f"{empty} is empty (0 bytes)" in error and "retrain" in error


def test_training_refuses_a_batch_larger_than_the_train_split_and_data_of_another_dataset(runs, tmp_path, capsys):
    train = ["train", "--out", str(tmp_path / "run"), "--data", str(runs["data"]), "--T", "10", "--steps", "1"]
    assert main([*train, "--batch-size", "1000000"]) == 2
    assert "train.batch_size 1000000 is larger than the train split (1497 images)" in capsys.readouterr().err
    assert main([*train, "--batch-size", "8", "--dataset", "cifar10"]) == 2
    assert "holds digits, but the setting's dataset is cifar10" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("umask,mode", [("022", 0o644), ("002", 0o664), ("077", 0o600)])
def test_result_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Written atomically through a private temporary file, the result still has the umask's mode (not 0600)."""
    path = tmp_path / "result.json"
    code = f"from ddpm.io import write_json; write_json({str(path)!r}, {{'fid': 1.0}})"
    subprocess.run(["sh", "-c", f'umask {umask} && "$0" -c "$1"', sys.executable, code], check=True)
    assert path.stat().st_mode & 0o777 == mode
    assert json.loads(path.read_text()) == {"fid": 1.0}


def test_sample_shards_keep_their_arrays(runs, tmp_path):
    """Provenance is added beside the images, not in place of anything."""
    assert _sample(runs, runs["linear"], tmp_path / "s.npz") == 0
    arrays = np.load(tmp_path / "s.npz")
    assert {"images", "indices", "network_evaluations", "sampling_seconds", *PROVENANCE_KEYS,
            *SAMPLE_RECORD} == set(arrays.files)
    assert (str(arrays["model_weights"]), int(arrays["sample_seed"])) == ("ema", 0)
    assert str(arrays["sampler"]) == "ancestral" and int(arrays["network_evaluations"]) == 10  # every step of T = 10
    assert arrays["images"].shape == (2, 1, 8, 8) and list(arrays["indices"]) == [0, 1]


def test_a_bits_per_dim_shard_past_the_split_is_refused_not_cut_short(runs, tmp_path, capsys):
    """An image folder's test split is known only after preparation: a shard past its end used to score fewer images,
    silently."""
    out = tmp_path / "nll.npz"
    assert main([*_job("nll", runs, runs["linear"], out)[:-2], "--start", "290", "--count", "20", "--out",
                 str(out)]) == 2
    error = capsys.readouterr().err
    assert "test images 290..309 are out of range" in error and "has 300 images" in error
    assert "evaluate.nll_num_images" in error and not out.exists()


def test_bits_per_dim_records_its_decoder_and_refuses_to_merge_two(runs, tmp_path, capsys):
    def nll(out: Path, start: int, decoder: str) -> int:
        return main(["evaluate", "nll", "--checkpoint", str(runs["linear"]), "--data", str(runs["data"]), "--setting",
                     LINEAR, "--start", str(start), "--count", "2", "--batch-size", "2", "--decoder", decoder,
                     "--out", str(out)])

    assert nll(tmp_path / "official-0.npz", 0, "official") == 0 and nll(tmp_path / "exact-0.npz", 0, "exact") == 0
    assert nll(tmp_path / "exact-1.npz", 2, "exact") == 0
    official, exact = (load_npz(tmp_path / f"{d}-0.npz", ("total_bpd", "decoder")) for d in ("official", "exact"))
    assert (str(official["decoder"]), str(exact["decoder"])) == ("official", "exact")
    assert not np.array_equal(official["total_bpd"], exact["total_bpd"])  # L_0 is another number
    assert main(["evaluate", "nll-gather", "--shards", str(tmp_path / "official-0.npz"), "--setting", LINEAR,
                 "--out", str(tmp_path / "nll.json")]) == 0
    assert json.loads((tmp_path / "nll.json").read_text())["decoder"] == "official"
    assert main(["evaluate", "nll-gather", "--shards", str(tmp_path / "official-0.npz"), str(tmp_path / "exact-1.npz"),
                 "--setting", LINEAR, "--out", str(tmp_path / "mixed.json")]) == 2
    assert "different decoder likelihoods (exact, official)" in capsys.readouterr().err
    assert not (tmp_path / "mixed.json").exists()
