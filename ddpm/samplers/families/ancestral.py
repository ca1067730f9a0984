"""DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2), on every step or on a subsequence of S steps (the process
respaced to it, IDDPM §4), with the network's own variance or an override at sampling time."""

from __future__ import annotations

from ...vocabulary import SAMPLE_VARIANCES
from ..base import Sampler

#: DDIM Table 1's row names of the ancestral sampler, by variance.
_LABELS = {"model": "ancestral", "fixedlarge": "σ̂", "fixedsmall": "ancestral, σ² = β̃"}


class Ancestral(Sampler):
    """x_{t−1} = μ_θ(x_t, t) + σ_t z (Algorithm 2) with σ² the network's (``model``), β of the respaced process
    (``fixedlarge``: DDIM Table 1's σ̂) or β̃ (``fixedsmall``, Eq. 7); no noise at the last step."""

    name = "ancestral"
    summary = "DDPM's ancestral sampler (Algorithm 2; σ² the network's, or variance: fixedlarge β / fixedsmall β̃)"
    keys = {"variance": "model"}
    order = 0

    @classmethod
    def check_point(cls, point, key) -> None:
        if point.eta is not None:
            raise ValueError(f"{key('eta')}: η is DDIM's; the ancestral sampler takes a variance instead "
                             f"({', '.join(SAMPLE_VARIANCES)})")
        super().check_point(point, key)
        if point.variance not in SAMPLE_VARIANCES:
            raise ValueError(f"{key('variance')}: unknown variance {point.variance!r}; valid: "
                             f"{', '.join(SAMPLE_VARIANCES)}")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--variance", choices=SAMPLE_VARIANCES, default=None,
                            help="ancestral only: the model's own σ², or fixedlarge (β) / fixedsmall (β̃) of the "
                                 "respaced process (default: model)")

    @classmethod
    def name_parts(cls, point):
        return [], ([] if point.variance == "model" else [point.variance])

    @classmethod
    def label(cls, point) -> str:
        return _LABELS[point.variance]

    def variance_override(self, diffusion):
        return None if self.point.variance == "model" else self.point.variance

    def step(self, model_output, index, sample, generator=None):
        t = self.process.timestep_tensor(index, sample)
        return self.process.p_sample(None, sample, t, generator=generator, clip_denoised=self.point.clip,
                                     model_output=model_output)
