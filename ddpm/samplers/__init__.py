"""Sampling a trained model: the sampling axis's points (:mod:`~ddpm.samplers.point`), the sampler families
(:mod:`ddpm.samplers.families`, one module each) behind one interface (:class:`~ddpm.samplers.base.Sampler`), and the
one reverse loop that runs any of them (:func:`~ddpm.samplers.loop.sample_loop`).

A point (:class:`SamplerPoint`: sampler × S × skip × its own keys × clip) names a family; the family says which keys
it takes and their defaults, which S of the T steps it visits, how it steps from one to the next (keeping any
multistep state in the sampler object, as diffusers' schedulers do), how its points are named and labelled, and its
command-line flags. A new family is one module in ``families/``.

The points, the registry and the families import no torch, so a config is checked without it; the loop and the
encoder (which do) are imported on first use.
"""

import importlib

from .base import Sampler, timestep_subsequence
from .point import (DEFAULT_SAMPLING, SAMPLER_FILE, SAMPLER_KEYS, SamplerPoint, expand_sampling, network_evaluations,
                    read_sampler_file, write_sampler)
from .registry import FAMILIES, SAMPLERS, SKIPS, sampler_family

_TORCH_EXPORTS = {
    "sample_loop": "loop", "sampling_process": "loop", "NonFiniteSamples": "loop",
    "make_sampler": "loop", "ddim_encode": "encoding", "reconstruction_error": "encoding",
}

__all__ = ["Sampler", "timestep_subsequence", "DEFAULT_SAMPLING", "SAMPLER_FILE", "SAMPLER_KEYS", "SamplerPoint",
           "expand_sampling", "network_evaluations", "read_sampler_file", "write_sampler", "FAMILIES", "SAMPLERS", "SKIPS", "sampler_family",
           *_TORCH_EXPORTS]


def __getattr__(name):
    if name in _TORCH_EXPORTS:
        return getattr(importlib.import_module(f".{_TORCH_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ddpm.samplers' has no attribute {name!r}")
