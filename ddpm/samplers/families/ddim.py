"""DDIM's generalized process (Song, Meng & Ermon 2020, Eq. 12) with σ_τ(η) of Eq. 16 on a subsequence of S steps;
η = 1 is the ancestral sampler with σ² = β̃, η = 0 is deterministic."""

from __future__ import annotations

from ..base import Sampler


class DDIM(Sampler):
    """x_{τ−1} = √ᾱ_{τ−1} x̂_0 + √(1 − ᾱ_{τ−1} − σ_τ²) ε̂ + σ_τ z, taking only the network's mean (its variance is
    σ(η)); a noise tensor is drawn at every step, η = 0 included (:meth:`ddpm.diffusion.GaussianDiffusion.ddim_sample`)."""

    name = "ddim"
    summary = "DDIM (Eq. 12) with σ(η) of Eq. 16: eta in [0, 1], 0 deterministic"
    keys = {"eta": 0.0}
    order = 1

    @classmethod
    def check_point(cls, point, key) -> None:
        if point.variance is not None:
            raise ValueError(f"{key('variance')}: the ddim sampler's variance is set by η (eta), not by variance")
        super().check_point(point, key)
        if isinstance(point.eta, bool) or not isinstance(point.eta, (int, float)) or not 0.0 <= point.eta <= 1.0:
            raise ValueError(f"{key('eta')}: η must be in [0, 1], got {point.eta!r}")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--eta", type=float, default=None,
                            help="ddim only: η in [0, 1] (default: 0, deterministic)")

    @classmethod
    def name_parts(cls, point):
        return [f"eta{point.eta:g}"], []

    @classmethod
    def label(cls, point) -> str:
        return f"η = {point.eta:.1f}"

    def step(self, model_output, index, sample, generator=None):
        t = self.process.timestep_tensor(index, sample)
        return self.process.ddim_sample(None, sample, t, eta=self.point.eta, generator=generator,
                                        clip_denoised=self.point.clip, model_output=model_output)


def reconstruction_point(steps: int | None, skip: str):
    """DDIM Table 2's decoder (and :func:`ddpm.samplers.ddim_encode`'s encoder): DDIM, η = 0, x̂₀ not clipped, on
    ``steps`` steps with ``skip``."""
    from ..point import SamplerPoint

    return SamplerPoint(DDIM.name, steps, skip, eta=0.0, clip=False)
