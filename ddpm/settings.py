"""A sweep in the config → its settings: what each setting is, as data, and its readable name.

A :class:`Setting` is one point of the sweep's axes (schedule × T × mean_type × var_type × loss_type × seed); with
the sweep's shared training hyperparameters it makes a :class:`TrainConfig` (what a checkpoint records). Its name,
e.g. ``linear-T1000-eps-fixedlarge-mse-s0``, names its folder ``results/runs/<sweep>/<name>/`` and its MLflow run;
``setting.json`` in that folder records its axes (:func:`write_setting`), and reports read them from there, never
from the name. The sampling axis's points are :mod:`ddpm.samplers.point`'s. This module imports neither torch nor the
rest of the package (only its vocabulary, io and the sampler points).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .io import read_json, write_json
from .samplers.point import DEFAULT_SAMPLING, as_list
from .vocabulary import SCALES


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a value for each axis. Adding an axis is one field here (its ``label`` is how the value
    shows in the name), its entry in the schema's ``sweep`` (and ``sweep.rows``), and the code that uses it."""

    schedule: str = field(default="linear", metadata={"label": "{}"})
    T: int = field(default=1000, metadata={"label": "T{}"})
    mean_type: str = field(default="eps", metadata={"label": "{}"})
    var_type: str = field(default="fixedlarge", metadata={"label": "{}"})
    loss_type: str = field(default="mse", metadata={"label": "{}"})
    seed: int = field(default=0, metadata={"label": "s{}"})

    @property
    def name(self) -> str:
        """The folder and MLflow run name: the axes' labels joined by "-", in the order of the fields."""
        return "-".join(f.metadata["label"].format(getattr(self, f.name)) for f in fields(self))

    def axes(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Setting":
        """The setting of ``d``'s axes (``d`` may hold more: a training config, a table row); a missing axis fails."""
        axes = [f.name for f in fields(cls)]
        missing = [axis for axis in axes if axis not in d]
        if missing:
            raise ValueError(f"a setting needs every sweep axis; missing: {', '.join(missing)}")
        return cls(**{axis: d[axis] for axis in axes})


#: The axes of a sweep, in the order they appear in a setting's name.
SWEEP_AXES = tuple(f.name for f in fields(Setting))
#: The file in each run folder that records its setting's axes.
SETTING_FILE = "setting.json"


def write_setting(run_dir: str | Path, setting: Setting, *, imported: dict | None = None) -> Path:
    """Write ``setting.json`` (the setting's name and axes) into ``run_dir``; ``imported``: for published weights, where
    they came from and what the import inferred (``ddpm import``'s record)."""
    path = Path(run_dir) / SETTING_FILE
    write_json(path, {"name": setting.name, **setting.axes(), **({"imported": imported} if imported else {})})
    return path


def read_setting(run_dir: str | Path) -> Setting:
    """The setting recorded in ``run_dir/setting.json``."""
    path = Path(run_dir) / SETTING_FILE
    try:
        recorded = read_json(path)
        setting = Setting.from_dict(recorded)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read the setting of {run_dir} from {path}: {err}") from err
    if recorded.get("name") != setting.name:
        raise ValueError(f"{path} names the setting {recorded.get('name')!r}, but its axes make {setting.name!r}")
    return setting


@dataclass
class TrainConfig:
    """One setting's training, as its checkpoint records it; the defaults are the workflow's (its JSON schema)."""

    dataset: str = "digits"
    schedule: str = Setting.schedule
    T: int = Setting.T
    schedule_rescale: bool = False  # scale the linear endpoints by 1000/T (IDDPM)
    mean_type: str = Setting.mean_type
    var_type: str = Setting.var_type
    loss_type: str = Setting.loss_type
    timestep_sampler: str | None = None  # None: importance sampling for "kl", uniform otherwise
    preset: str = "tiny"
    dropout: float | None = None  # None: the preset's
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    flip: bool = False  # random horizontal flips (CIFAR-10: yes; digits: no, a flipped digit is another glyph)
    seed: int = Setting.seed
    log_every: int = 100
    preview_every: int = 0  # draw a grid of EMA samples every this many steps (0: never); logged to MLflow
    checkpoint_every: int = 1000  # save the resume state every this many steps (0: never; SIGTERM still saves it)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Speed:
    """Which speed-ups are on. ``Speed()`` is the plain fp32 eager path."""

    bf16: bool = False  # autocast the network to bfloat16 (fp32 master weights; the output is cast back to fp32)
    channels_last: bool = False  # NHWC activations and weights (faster convolutions on tensor cores)
    compile: bool = False  # torch.compile the network, falling back to eager if compilation fails
    cuda_graph: bool = False  # sampling / bits/dim: compile with mode="reduce-overhead" (CUDA graphs); needs compile
    fused_adam: bool = False  # Adam's fused kernel (one launch for all parameters)
    foreach_ema: bool = False  # the EMA update as one multi-tensor lerp instead of a loop over parameters
    tf32: bool = False  # TF32 matmuls and convolutions where a kernel stays in fp32

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def auto(cls, device) -> "Speed":
        """What pays off on ``device``: everything on CUDA; on a CPU, the multi-tensor updates only (bf16 and
        compilation are not reliably faster there, and they would change the CPU results the tests pin down)."""
        if str(device).split(":")[0] == "cuda":  # a torch.device or its name; torch is not imported here
            return cls(**{name: True for name in cls.names()})
        return cls(fused_adam=True, foreach_ema=True)

    @classmethod
    def parse(cls, text: str, device="cpu") -> "Speed":
        """``plain``, ``auto`` (see :meth:`auto`), or a comma-separated list of speed-ups, e.g. ``bf16,compile``."""
        text = text.strip()
        if text == "plain":
            return cls()
        if text == "auto":
            return cls.auto(device)
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in cls.names()]
        if unknown or not chosen:
            raise ValueError(f"unknown speed-up {', '.join(map(repr, unknown)) or repr(text)}; valid: plain, auto, or "
                             f"a comma-separated list of {', '.join(cls.names())}")
        speed = cls(**{name: True for name in chosen})
        if speed.cuda_graph and not speed.compile:
            raise ValueError("speed-up 'cuda_graph' needs 'compile' (CUDA graphs come from torch.compile)")
        return speed

    def describe(self) -> str:
        on = [name for name, value in asdict(self).items() if value]
        return ",".join(on) if on else "plain"


def expand_sweep(config: dict) -> list[Setting]:
    """All settings of the config's sweep, in a stable order.

    Without ``sweep.rows``: the cross product of the sweep's lists. With it: for each row in turn, the cross product
    of the sweep's lists with the row's values in place of them (a row gives a value or a list per axis), e.g. the
    six (mean, variance, loss) rows of DDPM's Table 2, each crossed with the sweep's seeds."""
    sweep = config["sweep"]
    rows = sweep.get("rows") or [{}]
    settings = []
    for row in rows:
        unknown = set(row) - set(SWEEP_AXES)
        if unknown:
            raise ValueError(f"sweep.rows: unknown axis {sorted(unknown)}; valid axes: {', '.join(SWEEP_AXES)}")
        axes = [as_list(row[a]) if a in row else sweep[a] for a in SWEEP_AXES]
        settings += [Setting(*values) for values in itertools.product(*axes)]
    names = [s.name for s in settings]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"the sweep lists a setting twice: {sorted(duplicates)}")
    return settings


def train_config(config: dict, setting: Setting) -> TrainConfig:
    """The full, resolved training configuration of ``setting`` in the sweep of ``config``."""
    train = dict(config["train"])
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({**{k: v for k, v in train.items() if k in known},
                                  **setting.axes(), "dataset": config["dataset"]["name"]})


#: ``scale: tiny`` — the same sweep (the same settings and objectives) on digits with the CPU-sized network and
#: few steps, so that every code path of a paper config runs without a GPU. Keys not listed keep the paper's values.
TINY_SCALE = {
    "dataset": {"name": "digits", "path": None, "download": False, "image_size": None, "test_fraction": 0.1667,
                "preprocess": "resize-crop"},
    "train": {"preset": "tiny", "steps": 40, "batch_size": 32, "warmup": 5, "ema_decay": 0.9, "log_every": 10,
              "preview_every": 40, "checkpoint_every": 20, "threads": 1},
    "sample": {"num_samples": 50, "shard_size": 50, "batch_size": 50, "grid_size": 36},
    "evaluate": {"feature_extractor": "classifier", "inception_weights": None, "classifier_steps": 300,
                 "nll_num_images": 5, "nll_shard_size": 5, "nll_batch_size": 5, "nll_timesteps_per_pass": 50,
                 "bootstrap_rounds": 10},
    "fid_over_training": {"num_samples": None},
}


#: ``scale: tiny``: FID's reference where the full config takes the first N train images (LSUN's 50,000).
TINY_REF_IMAGES = 500

#: ``scale: tiny``: a sampler point on every step (``steps`` null) takes this many instead (T is 1000 or more in the
#: papers' configs); points with a given S keep it.
TINY_ALL_STEPS = 20


def _tiny_sampling_row(row: dict) -> dict:
    steps = row.get("steps")
    if isinstance(steps, list):
        return {**row, "steps": [TINY_ALL_STEPS if s is None else s for s in steps]}
    return {**row, "steps": TINY_ALL_STEPS if steps is None else steps}


def apply_scale(config: dict) -> dict:
    """The config to run: as given for ``scale: full``; for ``scale: tiny``, :data:`TINY_SCALE` laid over it and
    ``-tiny`` added to its name (its results, tables and MLflow experiment stay apart from the full run's).
    ``paper_sweep`` (unless the config names another) keeps the original name: the published numbers are looked up
    under it."""
    scaled = {**config, "paper_sweep": config.get("paper_sweep") or config["name"]}
    if config.get("scale", "full") == "full":
        return scaled
    if config["scale"] not in SCALES:
        raise ValueError(f"config key 'scale': unknown scale {config['scale']!r}; valid scales: {', '.join(SCALES)}")
    for section, values in TINY_SCALE.items():
        scaled[section] = {**config.get(section, {}), **values}
    # What the full config turns on stays on, at the tiny size: the code path of a curve, not the curve.
    if scaled["fid_over_training"].get("steps"):
        scaled["fid_over_training"]["steps"] = [TINY_SCALE["train"]["steps"] // 2]
    if scaled["evaluate"].get("nll_train_images"):
        scaled["evaluate"]["nll_train_images"] = TINY_SCALE["evaluate"]["nll_num_images"]
    if scaled["evaluate"].get("ref_images"):
        scaled["evaluate"]["ref_images"] = TINY_REF_IMAGES
    if config.get("reconstruction", {}).get("steps"):  # every S (S ≤ T), on as many test images as bits/dim
        scaled["reconstruction"] = {**config["reconstruction"], "num_images": TINY_SCALE["evaluate"]["nll_num_images"]}
    scaled["sampling"] = [_tiny_sampling_row(row) for row in config.get("sampling") or DEFAULT_SAMPLING]
    scaled["name"] = f"{config['name']}-tiny"
    return scaled
