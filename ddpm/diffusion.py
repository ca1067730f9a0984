"""Gaussian diffusion: the forward process, the learned reverse process, its losses and its likelihood.

Equation numbers refer to Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv 2006.11239)
unless marked "IDDPM", Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"
(arXiv 2102.09672). The vocabulary (``q_sample``, ``p_mean_variance``, ``training_losses``, ``calc_bpd_loop``)
is the one openai/improved-diffusion made familiar.

Timesteps are 0-based: index ``t`` here is the paper's step t + 1, so ``t = 0`` is the decoder step
p_θ(x_0 | x_1) and ``t = T - 1`` is the first reverse step from x_T.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, mean_flat, nats_to_bits, normal_kl
from .noise import SampleNoise
from .progress import progress as progress_iter
from .schedules import check_betas
from .vocabulary import LOSS_TYPES, MEAN_TYPES, VAR_TYPES  # noqa: F401 (the process's names)

#: λ of L_hybrid (IDDPM Section 3.1).
HYBRID_LAMBDA = 0.001

Model = Callable[..., torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | SampleNoise | None


def _check_choice(kind: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")
    return value


def randn(shape: Sequence[int], generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise. ``generator`` may be a :class:`ddpm.noise.SampleNoise` (per-sample noise drawn on
    ``device``, the project's), one ``torch.Generator``, or one per batch element (as peers' code draws it, for
    parity tests); with one per element, each element's noise depends only on its own generator, not on the batch
    it is drawn in. A ``torch.Generator``'s noise is drawn on its device, so CPU generators give the same numbers on
    any device."""
    shape = tuple(shape)
    if isinstance(generator, SampleNoise):
        return generator.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]).to(device)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _model_device(model: Model) -> torch.device:
    for parameter in getattr(model, "parameters", lambda: ())():
        return parameter.device
    return torch.device("cpu")


class GaussianDiffusion:
    """The diffusion process for one (schedule, mean_type, var_type, loss_type) setting.

    ``betas`` are β_1 … β_T (see :func:`ddpm.schedules.make_betas`). ``timestep_map`` is set by
    :meth:`respaced`: the model is always called with the timestep index of the original process.
    """

    def __init__(
        self,
        betas,
        mean_type: str = "eps",
        var_type: str = "fixedlarge",
        loss_type: str = "mse",
        *,
        timestep_map: Sequence[int] | None = None,
    ):
        self.mean_type = _check_choice("mean_type", mean_type, MEAN_TYPES)
        self.var_type = _check_choice("var_type", var_type, VAR_TYPES)
        self.loss_type = _check_choice("loss_type", loss_type, LOSS_TYPES)
        betas = check_betas(betas)
        self.num_timesteps = T = len(betas)
        self.timestep_map = np.arange(T) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map must have one entry per step ({T}), got shape {self.timestep_map.shape}")

        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)  # ᾱ_t (Section 2, below Eq. 4)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t  (Eq. 7); β̃_1 = 0, so its log is clipped to β̃_2.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        posterior_log_variance_clipped = np.log(
            np.append(posterior_variance[1], posterior_variance[1:]) if T > 1 else betas
        )
        constants = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            # μ̃_t(x_t, x_0) = coef1 · x_0 + coef2 · x_t  (Eq. 7)
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            # σ² = β_t for "fixedlarge"; the first entry is β̃_2 so the decoder's variance is not the tiny β_1,
            # as in the official implementation.
            "fixedlarge_variance": np.append(posterior_variance[1], betas[1:]) if T > 1 else betas,
        }
        for name, value in constants.items():
            setattr(self, name, value)
        self._device_cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, mean_type={self.mean_type!r}, "
            f"var_type={self.var_type!r}, loss_type={self.loss_type!r})"
        )

    @property
    def learns_variance(self) -> bool:
        return self.var_type in ("learned", "learned_range")

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather the float64 constant ``name`` at timesteps ``t``; shape (B, 1, 1, …) for broadcasting with ``like``."""
        key = (name, t.device)
        table = self._device_cache.get(key)
        if table is None:
            table = self._device_cache[key] = torch.from_numpy(getattr(self, name)).to(t.device)
        out = table[t].to(like.dtype)
        return out.reshape(out.shape + (1,) * (like.ndim - 1))

    def _check_t(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"timesteps must be an integer tensor, got {type(t).__name__} {getattr(t, 'dtype', '')}")
        if t.shape != (batch,):
            raise ValueError(f"timesteps must have shape ({batch},) for a batch of {batch}, got {tuple(t.shape)}")
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}], got [{int(t.min())}, {int(t.max())}]")
        return t.long()

    def timestep_tensor(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Step ``index`` for every sample of the batch ``x``, on its device: the ``t`` of this process's methods."""
        return torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The steps of the original process that steps ``t`` of this one are: what the network is called with."""
        key = ("timestep_map", t.device)
        table = self._device_cache.get(key)
        if table is None:
            table = self._device_cache[key] = torch.from_numpy(self.timestep_map).to(t.device)
        return table[t]

    # ------------------------------------------------------------------ forward process q
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)  (Eq. 4)."""
        t = self._check_t(t, x_start.shape[0])
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = 1.0 - self._extract("alphas_cumprod", t, x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start)
        return mean, variance.expand_as(x_start), log_variance.expand_as(x_start)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) in closed form: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  (Eq. 4, reparameterised as in Eq. 9)."""
        t = self._check_t(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean μ̃_t, variance β̃_t and clipped log-variance of q(x_{t−1} | x_t, x_0)  (Eqs. 6–7)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start shape {tuple(x_start.shape)} differs from x_t shape {tuple(x_t.shape)}")
        t = self._check_t(t, x_t.shape[0])
        mean = self._extract("posterior_mean_coef1", t, x_t) * x_start + self._extract("posterior_mean_coef2", t, x_t) * x_t
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t, t, eps):
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t  (Eq. 4 solved for x_0; used in Eq. 11)."""
        return self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        """Invert Eq. 7: x_0 = (μ̃ − coef2 · x_t) / coef1."""
        return (xprev - self._extract("posterior_mean_coef2", t, x_t) * x_t) / self._extract("posterior_mean_coef1", t, x_t)

    # ------------------------------------------------------------------ reverse process p_θ
    def _split_model_output(self, model_output: torch.Tensor, x: torch.Tensor):
        channels = x.shape[1]
        expected = 2 * channels if self.learns_variance else channels
        if model_output.ndim != x.ndim or model_output.shape[0] != x.shape[0] or model_output.shape[2:] != x.shape[2:] or model_output.shape[1] != expected:
            why = f"2 x {channels} = {expected} channels (mean and variance)" if self.learns_variance else f"{channels} channels"
            raise ValueError(
                f"var_type {self.var_type!r} needs a model output of shape {(x.shape[0], expected, *x.shape[2:])} "
                f"({why}), got {tuple(model_output.shape)}"
            )
        if self.learns_variance:
            return torch.split(model_output, channels, dim=1)
        return model_output, None

    def _model_variance(self, var_output: torch.Tensor | None, x: torch.Tensor, t: torch.Tensor):
        if self.var_type == "learned":
            log_variance = var_output
        elif self.var_type == "learned_range":
            # IDDPM Eq. 15: Σ = exp(v log β_t + (1 − v) log β̃_t), v from the network's [-1, 1] output.
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("betas", t, x).log()
            frac = (var_output + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        elif self.var_type == "fixedlarge":
            log_variance = self._extract("fixedlarge_variance", t, x).log().expand_as(x)
        else:  # fixedsmall
            log_variance = self._extract("posterior_log_variance_clipped", t, x).expand_as(x)
        return log_variance

    def p_mean_variance(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        model_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean and variance of p_θ(x_{t−1} | x_t)  (Eq. 1), and the model's implied x̂_0.

        For ``eps`` the mean is Eq. 11 written as μ̃_t(x_t, x̂_0) of Eq. 7; ``clip_denoised`` clips x̂_0 to
        [-1, 1] first, as the official sampler does. ``model_output`` skips the model call when given.
        """
        t = self._check_t(t, x.shape[0])
        if model_output is None:
            model_output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        mean_output, var_output = self._split_model_output(model_output, x)
        log_variance = self._model_variance(var_output, x, t)

        def process(x0):
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.mean_type == "xprev":
            pred_xstart = process(self._predict_xstart_from_xprev(x, t, mean_output))
            mean = mean_output
        else:
            if self.mean_type == "xstart":
                pred_xstart = process(mean_output)
            else:
                pred_xstart = process(self._predict_xstart_from_eps(x, t, mean_output))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": log_variance.exp(),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "model_output": model_output,
        }

    def p_sample(self, model: Model, x: torch.Tensor, t: torch.Tensor, *, generator: Generator = None,
                 clip_denoised: bool = True, model_kwargs: dict | None = None,
                 model_output: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One reverse step x_{t−1} = μ_θ + σ_t z, z ~ N(0, I), with no noise at the last step (Algorithm 2).
        ``model_output`` skips the model call when given."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                   model_output=model_output)
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model: Model, x: torch.Tensor, t: torch.Tensor, *, eta: float = 0.0,
                    generator: Generator = None, clip_denoised: bool = True, model_kwargs: dict | None = None,
                    model_output: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One step of DDIM's generative process from x_t to x_{t−1} of this (possibly respaced) process  (DDIM Eq. 12):
        x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z, with
        σ_t(η) = η √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t−1})  (DDIM Eq. 16), ᾱ before the first step being 1.

        ε̂ is recomputed from x̂_0 after ``clip_denoised`` (as improved-diffusion; without clipping it is the network's
        ε). η = 1 gives σ_t² = β̃_t and the mean μ̃_t(x_t, x̂_0): the step of :meth:`p_sample` with σ² = β̃. The noise z
        is drawn at every step, η = 0 included, so both samplers use one noise tensor per step of its generator.
        ``model_output`` skips the model call when given."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                   model_output=model_output)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = self._extract("alphas_cumprod", t, x)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        direction = (1 - alpha_bar_prev - sigma ** 2).clamp_min(0)  # ≥ 0 exactly; rounding must not make it NaN
        mean = alpha_bar_prev.sqrt() * out["pred_xstart"] + direction.sqrt() * eps
        return {"sample": mean + sigma * noise, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model: Model, x: torch.Tensor, t: torch.Tensor, *, model_kwargs: dict | None = None
                            ) -> dict[str, torch.Tensor]:
        """One step of DDIM's encoder, the deterministic (η = 0) process run forwards: from x at the noise level before
        step ``t`` (ᾱ_{t−1}; x_0 when t = 0) to x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂  (DDIM §4.3: Euler steps of the ODE
        Eq. 14 in the other direction). ε̂ is the network's at the current point, called at step ``t`` (at t = 0,
        x_0 itself is fed in at the first step); x̂_0 is not clipped."""
        out = self.p_mean_variance(model, x, t, clip_denoised=False, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])  # the network's ε (eps), or the one it implies
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x)
        pred_xstart = (x - torch.sqrt(1 - alpha_bar_prev) * eps) / alpha_bar_prev.sqrt()
        alpha_bar = self._extract("alphas_cumprod", t, x)
        return {"sample": alpha_bar.sqrt() * pred_xstart + torch.sqrt(1 - alpha_bar) * eps, "pred_xstart": pred_xstart}

    def respaced(self, use_timesteps: Sequence[int], *, var_type: str | None = None) -> "GaussianDiffusion":
        """A process over a subset of the timesteps (fast sampling, IDDPM Section 4; the samplers pick the subset:
        :meth:`ddpm.samplers.base.Sampler.visited`).

        Keeps ᾱ at the kept steps and sets β_i = 1 − ᾱ_{s_i} / ᾱ_{s_{i−1}}; the model is still called with
        the original timestep indices. ``var_type`` replaces the process's variance (a sampling-time override:
        σ² = β or β̃ of the new process)."""
        steps = sorted(set(int(s) for s in use_timesteps))
        if not steps or steps[0] < 0 or steps[-1] >= self.num_timesteps:
            raise ValueError(f"respaced timesteps must be a non-empty subset of [0, {self.num_timesteps - 1}], got {list(use_timesteps)[:5]}…")
        if steps == list(range(self.num_timesteps)):  # every step: the same betas, not ones recomputed from ᾱ
            return GaussianDiffusion(self.betas, self.mean_type, var_type or self.var_type, self.loss_type,
                                     timestep_map=self.timestep_map)
        last_alpha_cumprod = 1.0
        new_betas = []
        for s in steps:
            new_betas.append(1.0 - self.alphas_cumprod[s] / last_alpha_cumprod)
            last_alpha_cumprod = self.alphas_cumprod[s]
        return GaussianDiffusion(
            np.array(new_betas), self.mean_type, var_type or self.var_type, self.loss_type,
            timestep_map=self.timestep_map[steps],
        )

    # ------------------------------------------------------------------ the variational bound
    def _vb_terms_bpd(self, model: Model, x_start, x_t, t, *, clip_denoised: bool, model_kwargs=None, model_output=None,
                      decoder: str = "exact"):
        """One term of Eq. 5 in bits/dim per image: L_{t−1} = KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for
        t > 0 (index), and L_0 = −log p_θ(x_0 | x_1) under the discretized decoder (Eq. 13, computed as ``decoder``
        says: :func:`~ddpm.losses.discretized_gaussian_log_likelihood`) at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs, model_output=model_output)
        kl = nats_to_bits(mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])))
        decoder_nll = -nats_to_bits(
            mean_flat(discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"],
                                                          decoder=decoder))
        )
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model: Model, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                        model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
        """Per-example training loss at timesteps ``t`` (Algorithm 1); returns a dict with ``loss`` and its parts.

        - ``mse``: L_simple = ‖target − network output‖² (Eq. 14), the target being ε, x_0 or μ̃_t by
          ``mean_type``. Averaged over dimensions (the paper's sum, divided by a constant).
        - ``kl``: T · L_t in bits/dim, an unbiased estimate of Σ_t L_t of Eq. 5 (without the constant L_T)
          when t is uniform; importance weights from :mod:`ddpm.timestep_samplers` keep it unbiased otherwise.
        - ``hybrid``: L_simple + λ L_vlb with λ = 0.001 and L_vlb ≈ T · L_t, the gradient of the L_vlb
          term stopped at the mean (IDDPM Eq. 16, Section 3.1).

        With a learned variance, L_simple alone gives Σ no gradient, so ``mse`` also adds the λ L_vlb term
        with the mean stopped — exactly ``hybrid``, and what improved-diffusion does. With a fixed variance the
        stopped term of ``hybrid`` has no gradient and only shifts the reported value.
        """
        if x_start.ndim < 2:
            raise ValueError(f"x_start must be a batch (B, C, …), got shape {tuple(x_start.shape)}")
        t = self._check_t(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        terms: dict[str, torch.Tensor] = {}
        if self.loss_type == "kl":
            terms["vb"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)["output"]
            terms["loss"] = terms["vb"] * self.num_timesteps
            return terms

        model_output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        mean_output, var_output = self._split_model_output(model_output, x_t)
        if self.learns_variance or self.loss_type == "hybrid":
            frozen = mean_output.detach() if var_output is None else torch.cat([mean_output.detach(), var_output], dim=1)
            vb = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_output=frozen)["output"]
            terms["vb"] = vb * self.num_timesteps * HYBRID_LAMBDA
        if self.mean_type == "eps":
            target = noise
        elif self.mean_type == "xstart":
            target = x_start
        else:  # xprev: μ̃_t(x_t, x_0) of Eq. 7
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        terms["mse"] = mean_flat((target - mean_output) ** 2)
        terms["loss"] = terms["mse"] + terms.get("vb", 0.0)
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim per image  (Eq. 5); no parameters, so a constant."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return nats_to_bits(mean_flat(normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))))

    @torch.no_grad()
    def calc_bpd_loop(
        self,
        model: Model,
        x_start: torch.Tensor,
        *,
        clip_denoised: bool = True,
        model_kwargs: dict | None = None,
        generator: Generator = None,
        progress: bool = False,
        decoder: str = "exact",
        timesteps_per_pass: int = 1,
    ) -> dict[str, torch.Tensor]:
        """The full variational bound of Eq. 5, term by term, for a batch of images in [-1, 1]; ``decoder`` says how
        L_0's likelihood is computed (``exact``, or ``official`` for parity with the papers' code).
        ``timesteps_per_pass``: how many timesteps of the batch go through the network together (a batch of few
        images keeps the network busier so), their noise drawn in the same order as one by one.

        Returns per image: ``total_bpd`` = L_T + Σ_t L_{t−1} (bits/dim, an upper bound on −log p(x_0)),
        ``prior_bpd`` = L_T, and per image and timestep index (shape (B, T)): ``vb`` (``vb[:, 0]`` = L_0, the
        decoder's NLL; ``vb[:, t]`` = L_t), ``xstart_mse`` (‖x̂_0 − x_0‖² per dim on the [-1, 1] scale: the
        distortion of Table 4) and ``mse`` (‖ε̂ − ε‖² per dim).
        """
        if x_start.ndim < 2 or not torch.is_floating_point(x_start):
            raise ValueError(f"x_start must be a float batch (B, C, …) in [-1, 1], got {x_start.dtype} {tuple(x_start.shape)}")
        if not torch.isfinite(x_start).all():
            raise ValueError("x_start contains NaN or Inf; images must be finite and scaled to [-1, 1]")
        lo, hi = float(x_start.min()), float(x_start.max())
        if lo < -1.0 or hi > 1.0:
            raise ValueError(f"images must be scaled to [-1, 1] for bits/dim, got values in [{lo:.4g}, {hi:.4g}]")
        batch = x_start.shape[0]
        if timesteps_per_pass < 1 or (model_kwargs and timesteps_per_pass > 1):
            raise ValueError(f"timesteps_per_pass must be at least 1 (and 1 with model_kwargs), got {timesteps_per_pass}")
        together = timesteps_per_pass
        vb, xstart_mse, mse = [], [], []
        groups = [range(i, max(i - together, -1), -1) for i in range(self.num_timesteps - 1, -1, -together)]
        for group in progress_iter(groups, total=len(groups), desc="bits/dim", enabled=progress):
            t = torch.cat([torch.full((batch,), i, device=x_start.device, dtype=torch.long) for i in group])
            noise = torch.cat([randn(x_start.shape, generator, device=x_start.device, dtype=x_start.dtype)
                               for _ in group])
            x_0 = x_start.repeat(len(group), *([1] * (x_start.ndim - 1)))
            x_t = self.q_sample(x_0, t, noise)
            out = self._vb_terms_bpd(model, x_0, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                     decoder=decoder)
            vb += out["output"].split(batch)
            xstart_mse += mean_flat((out["pred_xstart"] - x_0) ** 2).split(batch)
            mse += mean_flat((self._predict_eps_from_xstart(x_t, t, out["pred_xstart"]) - noise) ** 2).split(batch)
        vb_t = torch.stack(vb[::-1], dim=1)
        prior = self._prior_bpd(x_start)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior,
            "prior_bpd": prior,
            "vb": vb_t,
            "xstart_mse": torch.stack(xstart_mse[::-1], dim=1),
            "mse": torch.stack(mse[::-1], dim=1),
        }
