"""A small classifier as a feature extractor for torch-fidelity, for data sets where Inception means little.

FID (Heusel et al. 2017), IS (Salimans et al. 2016), KID (Bińkowski et al. 2018) and precision/recall
(Kynkäänniemi et al. 2019) are all defined on the features of a pretrained network; the papers use ImageNet's
Inception-v3. On 8×8 grey digits an ImageNet network sees upsampled blobs, so for such data we train a small
CNN on the real training images and hand its penultimate layer (FID/KID/PRC) and its logits without the bias
(IS) to torch-fidelity — the convention of torch-fidelity's own ``FeatureExtractorInceptionV3``, whose FID
layer is the 2048-d pool and whose IS layer is ``logits_unbiased``.

The classifier is saved as a plain dict (``torch.save``; loaded back with ``weights_only=True``):

    {"format": "ddpm-classifier-v1", "state_dict": ..., "arch": {"in_channels", "width", "feature_dim"},
     "input_shape": [C, H, W], "num_classes": int, "train_accuracy": float, "steps": int, "seed": int}
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ddpm.checkpoint import save_checkpoint
from ddpm.datasets import check_images, to_model_range

CLASSIFIER_FORMAT = "ddpm-classifier-v1"
EXTRACTOR_NAME = "ddpm-classifier"
FEATURE_LAYER = "penultimate"  # FID, KID, precision/recall
IS_LAYER = "logits_unbiased"  # IS: logits without the bias, as torch-fidelity does for Inception


# ----------------------------------------------------------------------------------------------------------------
# The network


class SmallClassifier(nn.Module):
    """Three 3×3 conv layers → 4×4 adaptive average pool → ``feature_dim`` ReLU features → ``num_classes`` logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.fc = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim) of images in [-1, 1]."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------------------------
# Training, saving, loading


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    out_path: str | Path,
    *,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    feature_dim: int = 128,
    seed: int = 0,
    device: str = "cpu",
    num_threads: int | None = 1,
    progress: bool = False,
) -> dict:
    """Train :class:`SmallClassifier` with Adam on ``images`` (uint8 (N, C, H, W)) and integer ``labels``, and save it
    atomically to ``out_path``. Deterministic for a given ``seed`` on CPU (the global RNG state is left untouched).

    ``progress``: print the loss ten times along the way.
    ``num_threads``: CPU threads while training (torch's setting is restored afterwards). The default 1 is the
    fastest for a network this small — with several threads OpenMP synchronisation dominates each step, badly so on a
    busy machine — and makes the result independent of the machine's core count; ``None`` keeps torch's setting.

    Returns a summary: ``path``, ``train_accuracy`` (on ``images``, eval mode), ``final_loss``, ``steps``,
    ``num_train``, ``num_classes``, ``input_shape``, ``feature_dim``."""
    check_images(images, "images")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array with one label per image ({len(images)}), "
                         f"got {labels.dtype} array of shape {labels.shape}")
    if labels.min() < 0:
        raise ValueError(
            f"{int((labels < 0).sum())} of the {len(labels)} training images have no class label (label < 0), so the "
            "small classifier used as FID/IS feature extractor cannot be trained on them; this happens with an image "
            "folder whose images are not each inside one subfolder per class. Either arrange the images in one "
            "subfolder per class (folder/<class>/<image>), or set `evaluate.feature_extractor: inception-v3-compat` "
            "in the config (no classifier needed)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    num_classes = int(labels.max()) + 1
    in_channels = int(images.shape[1])
    arch = {"in_channels": in_channels, "width": int(width), "feature_dim": int(feature_dim)}

    y_all = torch.from_numpy(labels.astype(np.int64))
    with _torch_threads(num_threads):  # the images stay uint8 (on disk for a prepared split): a batch at a time
        model, loss = _fit(images, y_all, num_classes, arch, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           progress=progress, device=device)
        accuracy = _accuracy(model, images, y_all, device=device)

    state = {
        "format": CLASSIFIER_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": arch,
        "input_shape": [int(s) for s in images.shape[1:]],
        "num_classes": num_classes,
        "train_accuracy": accuracy,
        "steps": int(steps),
        "seed": int(seed),
    }
    save_checkpoint(out_path, state)
    return {
        "path": str(out_path),
        "train_accuracy": accuracy,
        "final_loss": float(loss.detach()),
        "steps": int(steps),
        "num_train": int(len(images)),
        "num_classes": num_classes,
        "input_shape": state["input_shape"],
        "feature_dim": int(feature_dim),
    }


def _batch(images, index, device) -> torch.Tensor:
    """The uint8 images at ``index`` (an array in memory, or a :class:`~ddpm.store.SplitImages` on disk) in
    [-1, 1] on ``device``."""
    return to_model_range(np.ascontiguousarray(images[np.asarray(index)])).to(device)


def _fit(images, y, num_classes: int, arch: dict, *, steps: int, batch_size: int, lr: float, seed: int,
         progress: bool = False, device="cpu"):
    """Adam with a cosine learning-rate decay on random minibatches; returns the model (eval mode) and the last loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(num_classes=num_classes, **arch).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    every = max(1, steps // 10)
    for step in range(1, steps + 1):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
        loss = F.cross_entropy(model(_batch(images, idx.numpy(), device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % every == 0 or step == steps):
            print(f"classifier step {step}/{steps}: loss {loss.item():.4f}", flush=True)
    return model.eval(), loss.detach()


@contextlib.contextmanager
def _torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _accuracy(model: SmallClassifier, images, y: torch.Tensor, batch: int = 1024, device="cpu") -> float:
    correct = sum(int((model(_batch(images, np.arange(i, min(i + batch, len(images))), device)).argmax(1).cpu()
                       == y[i:i + batch]).sum()) for i in range(0, len(images), batch))
    return correct / len(images)


def load_classifier(path: str | Path, device: str = "cpu") -> tuple[SmallClassifier, dict]:
    """Load a file written by :func:`train_classifier` (``weights_only=True``): the model in eval mode and the dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier file not found: {path} (create it with ddpm.features.train_classifier)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a {CLASSIFIER_FORMAT} classifier file")
    model = SmallClassifier(num_classes=state["num_classes"], **state["arch"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval().requires_grad_(False), state


# ----------------------------------------------------------------------------------------------------------------
# torch-fidelity feature extractor


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor backed by a :func:`train_classifier` file.

    Provides ``"penultimate"`` (the ReLU features before the logits; default for FID, KID and PRC),
    ``"logits_unbiased"`` (``features @ W.T``, no bias; default for IS, as for torch-fidelity's Inception) and
    ``"logits"``. Input: uint8 (B, 3, H, W) as torch-fidelity passes it; for a one-channel classifier the three
    channels are averaged (grey images reach torch-fidelity replicated to 3 channels), and images of another size
    are resized bilinearly to the classifier's input size."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"feature extractor {name!r} needs feature_extractor_weights_path (a classifier file "
                             "written by ddpm.features.train_classifier)")
        self.model, state = load_classifier(feature_extractor_weights_path)
        self.in_channels, self.height, self.width = (int(s) for s in state["input_shape"])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected a uint8 tensor (B, 3, H, W), got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        x = x.float()
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        elif self.in_channels != 3:
            raise ValueError(f"classifier with {self.in_channels} input channels cannot take RGB input")
        if tuple(x.shape[-2:]) != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1.0

    def forward(self, x):
        feats = self.model.features(self._prepare(x))
        out = {FEATURE_LAYER: feats}
        out[IS_LAYER] = feats @ self.model.head.weight.T
        out["logits"] = out[IS_LAYER] + self.model.head.bias
        return tuple(out[name].to(torch.float32) for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return FEATURE_LAYER, IS_LAYER, "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": IS_LAYER, "fid": FEATURE_LAYER, "kid": FEATURE_LAYER, "prc": FEATURE_LAYER}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 8, 8]) * 255).to(torch.uint8)


def register_classifier_extractor(path: str | Path) -> str:
    """Register :class:`ClassifierFeatureExtractor` with torch-fidelity (once; later calls are no-ops) and return its
    name, for ``calculate_metrics(feature_extractor=name, feature_extractor_weights_path=path)``.

    ``path`` is checked to be a loadable classifier file; torch-fidelity receives it per call, so one registration
    serves any number of classifier files."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    load_classifier(path)  # fail early, with a clear message, on a missing or foreign file
    registered = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if registered is None:
        register_feature_extractor(EXTRACTOR_NAME, ClassifierFeatureExtractor)
    elif (registered.__module__, registered.__qualname__) != (__name__, ClassifierFeatureExtractor.__qualname__):
        raise ValueError(f"torch-fidelity already has a different feature extractor named {EXTRACTOR_NAME!r}: {registered}")
    return EXTRACTOR_NAME
