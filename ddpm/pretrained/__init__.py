"""Published weights as this project's checkpoints (``ddpm import``), each format recognised by its contents:

- **diffusers** (``google/ddpm-cifar10-32``, ``ddpm-church-256``, …): a ``UNet2DModel`` folder beside a
  ``DDPMScheduler`` config, from a local folder or through huggingface_hub (:mod:`.diffusers`);
- **pytorch-ddpm** (w86763777/pytorch-ddpm): ``ckpt.pt`` with ``net_model`` and ``ema_model`` (:mod:`.pytorch_ddpm`);
- **pytorch-diffusion** (pesser/pytorch_diffusion's conversions of DDPM's TF checkpoints) and **ddim**
  (ermongroup/ddim's ``ckpt.pth``, DDIM's CelebA model among them) (:mod:`.ddpm_tf`);
- **improved-diffusion** (openai/improved-diffusion's released ``.pt`` files, Improved DDPM) (:mod:`.improved`).

All are :class:`ddpm.unet.UNet`: what differs between the codes (GroupNorm ε, the stride-2 convolution's padding,
the timestep embedding's frequencies and the order of its sines and cosines, Improved DDPM's scale-shift norm and
t·1000/T) is a field of :class:`ddpm.presets.UNetConfig` or a permutation of the first embedding layer's columns.
The checkpoint written holds the weights, the architecture (``unet``), the diffusion process the source describes
(its ``config``, as a trained checkpoint's) and where it came from (``source``: format, files with their sha256,
and notes that name everything inferred). Anything that does not fit is refused before anything is written, with
a summary of what differs.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from ..checkpoint import UNET_KEY, save_checkpoint
from ..datasets import read_manifest
from ..presets import check_config
from ..settings import Setting
from ..vocabulary import HUB_MODEL_ID, IMPORT_FORMATS
from .common import Source, diffusion_config, load_weights_file
from .ddpm_tf import is_ddim_checkpoint, is_pytorch_diffusion, read_ddim_checkpoint, read_pytorch_diffusion
from .diffusers import DIFFUSERS_WEIGHTS, read_diffusers
from .improved import is_improved_diffusion, read_improved_diffusion
from .pytorch_ddpm import is_pytorch_ddpm, read_pytorch_ddpm

#: The file formats (IMPORT_FORMATS less diffusers, a folder): how each is recognised by its contents, its reader.
FILE_FORMATS = {
    "pytorch-ddpm": (is_pytorch_ddpm, read_pytorch_ddpm),
    "pytorch-diffusion": (is_pytorch_diffusion, read_pytorch_diffusion),
    "ddim": (is_ddim_checkpoint, read_ddim_checkpoint),
    "improved-diffusion": (is_improved_diffusion, read_improved_diffusion),
}


def resolve_source(source: str | Path, *, revision: str | None = None) -> Path:
    """A local file or folder as it is; otherwise a Hugging Face model id (``owner/name``), fetched with
    huggingface_hub into its cache: the configs and the safetensors weights, or the ``.bin`` ones where the model has
    no safetensors."""
    path = Path(source)
    if path.exists():
        return path
    if not re.fullmatch(HUB_MODEL_ID, str(source)):
        raise FileNotFoundError(f"{source} is neither a file, a folder nor a Hugging Face model id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        for weights in DIFFUSERS_WEIGHTS:
            folder = Path(snapshot_download(str(source), revision=revision,
                                            allow_patterns=["*.json", weights, f"unet/{weights}"]))
            if (folder / weights).is_file() or (folder / "unet" / weights).is_file():
                break
        return folder
    except Exception as err:  # no network, an unknown id, a private model
        raise FileNotFoundError(
            f"cannot fetch {source} from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Without a network: download the folder elsewhere (huggingface-cli download {source}) and give its "
            f"path") from err


def _described(contents) -> str:
    if isinstance(contents, dict):
        return f"a dict of {', '.join(sorted(map(str, contents))[:6])}{', …' if len(contents) > 6 else ''}"
    return f"a {type(contents).__name__}" + (f" of {len(contents)}" if isinstance(contents, (list, tuple)) else "")


def read_source(path: Path, fmt: str | None = None, *, image_size: int | None = None,
                flags: str | None = None) -> Source:
    """The weights at ``path``: a folder is diffusers', a file is recognised by its contents (:data:`FILE_FORMATS`);
    ``fmt``, where given, must be what they are. ``flags``: improved-diffusion's, for a file it did not release."""
    if fmt is not None and fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; valid formats: {', '.join(IMPORT_FORMATS)}")
    if path.is_dir():
        if fmt not in (None, "diffusers") or not ((path / "config.json").is_file()
                                                  or (path / "unet" / "config.json").is_file()):
            raise ValueError(f"{path} is a folder without config.json (nor unet/config.json): not a diffusers model "
                             f"folder; give the checkpoint file itself")
        return read_diffusers(path)
    contents = load_weights_file(path)
    found = [name for name, (recognises, _) in FILE_FORMATS.items() if recognises(contents)]
    if not found or fmt not in (None, *found):
        raise ValueError(f"{path} is {'not ' + fmt if fmt else 'none of ' + ', '.join(IMPORT_FORMATS)}: it holds "
                         f"{_described(contents)}" + (f" (it looks like {found[0]})" if found else ""))
    fmt = fmt or found[0]
    reader = FILE_FORMATS[fmt][1]
    if fmt == "improved-diffusion":
        return reader(path, contents, image_size=image_size, flags=flags)
    if flags is not None:
        raise ValueError(f"--flags are improved-diffusion's; {path} is a {fmt} file")
    return reader(path, contents, image_size=image_size)


def import_checkpoint(source: str | Path, out: str | Path, *, fmt: str | None = None, setting: Setting | None = None,
                      data_dir: str | Path | None = None, revision: str | None = None,
                      image_size: int | None = None, flags: str | None = None, raw_weights: bool = False) -> dict:
    """``ddpm import``: read ``source`` (its format recognised; ``fmt`` where given must be it), check it against
    ``setting`` and the prepared data in ``data_dir`` (dataset name, image shape), and write the checkpoint ``out``
    atomically. Returns what the checkpoint records of its source. ``raw_weights``: the source's training weights
    are the ones sampled, in place of its EMA (a source without them is refused)."""
    path = resolve_source(source, revision=revision)
    if data_dir is not None and image_size is None:
        image_size = read_manifest(data_dir)["image_shape"][1]
    found = read_source(path, fmt, image_size=image_size, flags=flags)
    fmt = found.format
    check_config(found.unet)
    shape = [found.unet.in_channels, found.unet.image_size, found.unet.image_size]
    dataset = "imported"
    if data_dir is not None:
        manifest = read_manifest(data_dir)
        dataset = manifest["dataset"]
        if list(manifest["image_shape"]) != shape:
            raise ValueError(f"{source} generates images of shape {shape}, but {data_dir} holds {dataset} images of "
                             f"shape {manifest['image_shape']}")
    config, notes = diffusion_config(found, setting, dataset=dataset)
    weights = "ema and raw" if found.raw is not None else "ema"
    if raw_weights:
        if found.raw is None:
            raise ValueError(f"{source} holds one set of weights (its {fmt} file has no EMA beside them): "
                             f"--raw-weights has nothing to take")
        found.ema, weights = found.raw, "raw, sampled in place of the EMA (--raw-weights)"
    record = {"format": fmt, "path": str(source), "resolved": str(path), "files": found.files, "weights": weights,
              "revision": revision or "", "notes": found.notes + notes}
    save_checkpoint(out, {"model": found.raw, "ema": found.ema, "config": asdict(config), "data_shape": shape,
                          "data_sha256": "", UNET_KEY: found.unet.to_dict(), "source": record, "step": 0})
    return record
