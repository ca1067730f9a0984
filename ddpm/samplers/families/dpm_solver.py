"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv 2211.01095, Algorithm 2): the diffusion ODE solved in its data-prediction form, second-order
multistep, as diffusers' ``DPMSolverMultistepScheduler`` does it by default (solver_order 2, algorithm_type
dpmsolver++, midpoint, lower_order_final, final_sigmas_type zero, no thresholding)."""

from __future__ import annotations

import math

import numpy as np

from ..base import Sampler, timestep_subsequence


class DPMSolverPlusPlus(Sampler):
    """With α_i = √ᾱ_{τ_i}, σ_i = √(1 − ᾱ_{τ_i}), λ_i = log(α_i/σ_i) and h = λ_{i−1} − λ_i, the first step and the
    last (down to σ = 0, where x is x̂_0) are first-order (DPM-Solver++ Eq. 5 with k = 1):
    x_{i−1} = (σ_{i−1}/σ_i) x_i − α_{i−1}(e^{−h} − 1) x̂_0(x_i);
    every other step also uses the x̂_0 of the step before (Algorithm 2, r = h_prev / h):
    D = x̂_0 + (x̂_0 − x̂_0^prev) / (2r), x_{i−1} = (σ_{i−1}/σ_i) x_i − α_{i−1}(e^{−h} − 1) D.
    Deterministic: no noise is drawn. x̂_0 is clipped to [-1, 1] only where the point says ``clip`` (diffusers' default
    does not); a learned-variance network's mean alone is used."""

    name = "dpm-solver++"
    summary = "DPM-Solver++(2M) (arXiv 2211.01095, Algorithm 2), deterministic; diffusers' default skip: linspace"
    skips = ("linspace", "uniform", "quadratic")
    clip = False
    order = 2

    @classmethod
    def visited(cls, T: int, point) -> list[int]:
        """``linspace``: diffusers' default spacing, ``round(linspace(0, T − 1, S + 1))`` without its first step (0),
        i.e. its ``timesteps`` in ascending order; ``uniform`` and ``quadratic`` as the other families."""
        if point.skip != "linspace" or point.steps is None or point.steps == T:
            return timestep_subsequence(T, point.steps, "uniform" if point.skip == "linspace" else point.skip)
        if not 1 <= point.steps <= T:
            raise ValueError(f"cannot pick S = {point.steps} sampling steps out of T = {T}; need 1 <= S <= T")
        return [int(step) for step in np.linspace(0, T - 1, point.steps + 1).round()[1:]]

    def set_timesteps(self, diffusion) -> None:
        super().set_timesteps(diffusion)
        alpha_bar = [float(a) for a in self.process.alphas_cumprod]
        self._alphas = [math.sqrt(a) for a in alpha_bar]
        self._sigmas = [math.sqrt(1.0 - a) for a in alpha_bar]
        self._previous = None  # (x̂_0, λ) of the step before, for the second-order update

    def _below(self, index: int) -> tuple[float, float]:
        """α and σ of the noise level the step from ``index`` goes to: the next step down, or σ = 0 after the last."""
        return (self._alphas[index - 1], self._sigmas[index - 1]) if index > 0 else (1.0, 0.0)

    def step(self, model_output, index, sample, generator=None):
        t = self.process.timestep_tensor(index, sample)
        pred_xstart = self.process.p_mean_variance(None, sample, t, clip_denoised=self.point.clip,
                                                   model_output=model_output)["pred_xstart"]
        alpha_s, sigma_s = self._alphas[index], self._sigmas[index]
        alpha_t, sigma_t = self._below(index)
        lambda_s = math.log(alpha_s / sigma_s)
        if sigma_t == 0.0:  # the last step: x̂_0 itself (first order with h = ∞)
            self._previous = None
            return {"sample": pred_xstart, "pred_xstart": pred_xstart}
        h = math.log(alpha_t / sigma_t) - lambda_s
        data = pred_xstart
        if self._previous is not None:
            previous_xstart, previous_lambda = self._previous
            r = (lambda_s - previous_lambda) / h
            data = pred_xstart + (pred_xstart - previous_xstart) * (0.5 / r)
        self._previous = (pred_xstart, lambda_s)
        return {"sample": sample * (sigma_t / sigma_s) - data * (alpha_t * math.expm1(-h)), "pred_xstart": pred_xstart}
