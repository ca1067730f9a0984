"""What the schema cannot say, checked in Python before any job is planned (``ddpm.configcheck.check_workflow_config``,
which the workflow's ``common.smk`` calls once): each bad value is refused naming its key, without a Snakemake run.
The workflow's own refusals of the same values (a dry run each) are in tests/test_bad_input.py."""

import copy

import pytest

from conftest import ROOT
from ddpm.configcheck import ConfigError, check_workflow_config, load_config

DEMO, _ = load_config()


def refused(changes: dict, tmp_path) -> str:
    """The key :func:`check_workflow_config` names for the demo config with ``changes`` (dotted keys) applied."""
    config = copy.deepcopy(DEMO)
    config["results_dir"] = str(tmp_path / "results")
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    with pytest.raises(ConfigError) as raised:
        check_workflow_config(config)
    return raised.value.key


def test_the_demo_config_passes(tmp_path):
    check_workflow_config({**copy.deepcopy(DEMO), "results_dir": str(tmp_path / "results")})


@pytest.mark.parametrize("changes, key", [
    ({"results_dir": "/"}, "results_dir"),
    ({"sampling": [{"sampler": "ddim", "steps": 500}]}, "sampling[0].steps"),  # S > T of the demo's T = 100 setting
    ({"sampling": [{"sampler": "dpm-solver++", "variance": "fixedlarge"}]}, "sampling[0].variance"),
    ({"sampling": [{"sampler": "ancestral", "skip": "linspace"}]}, "sampling[0].skip"),
    ({"sampling": [{"sampler": "heun"}]}, "sampling[0].sampler"),
    ({"dataset.path": "/no/such/folder"}, "dataset.path"),
    ({"dataset.name": "cifar10", "dataset.download": False}, "dataset.path"),
    ({"evaluate.inception_weights": "/no/such/file.pth"}, "evaluate.inception_weights"),
    ({"evaluate.ref_stats": "/no/such/stats.npz"}, "evaluate.ref_stats"),
    ({"dataset.image_size": 7}, "dataset.image_size"),  # the tiny preset halves the image once: 7 does not halve
    ({"sample.num_samples": 1}, "sample.num_samples"),
    ({"sample.shard_size": 301}, "sample.shard_size"),
    ({"evaluate.nll_shard_size": 7, "evaluate.nll_batch_size": 2}, "evaluate.nll_shard_size"),
    ({"train.batch_size": 5000}, "train.batch_size"),  # more than the digits' train split (1497)
    ({"train.gpus": 3, "train.batch_size": 128}, "train.batch_size"),
    ({"evaluate.nll_num_images": 301}, "evaluate.nll_num_images"),
    ({"speed": "bf16,warp-drive"}, "speed"),
    ({"train.schedule_rescale": True, "sweep.T": [10], "sampling": [{"sampler": "ancestral"}]}, "train.schedule_rescale"),
    ({"fid_over_training.steps": [10**9]}, "fid_over_training.steps"),
    ({"reconstruction.steps": [10**6]}, "reconstruction.steps"),
    ({"reconstruction.skip": "linspace"}, "reconstruction.skip"),  # DDIM's encoder takes uniform and quadratic only
    ({"pretrained.source": "/no/such/model"}, "sweep"),  # the demo sweeps several settings: one model is one setting
])
def test_each_value_the_schema_cannot_refuse_is_refused_naming_its_key(changes, key, tmp_path):
    assert refused(changes, tmp_path) == key


def test_published_weights_need_one_setting_and_an_existing_local_source_at_tiny_scale(tmp_path):
    one = {"sweep.schedule": ["linear"], "sweep.T": [100], "sweep.rows": None}
    assert refused({**one, "pretrained.source": "/no/such/model"}, tmp_path) == "pretrained.source"
    assert refused({**one, "pretrained.source": str(ROOT / "README.md"), "fid_over_training.steps": [10]},
                   tmp_path) == "fid_over_training.steps"
