"""How training picks timesteps t: uniformly (Algorithm 1), or by importance sampling (IDDPM Section 3.3).

Nichol & Dhariwal 2021 (arXiv 2102.09672), Eq. 18: L_vlb = E_{t∼p_t}[L_t / p_t] with p_t ∝ √E[L_t²], the
second moment estimated from the 10 most recent losses at each t; uniform until every t has 10.
"""

from __future__ import annotations

import numpy as np
import torch

from .vocabulary import TIMESTEP_SAMPLERS


class TimestepSampler:
    """Draws a batch of timesteps with the weights 1 / (T p_t) that keep the loss estimate unbiased."""

    #: whether :meth:`update` uses the losses (in data-parallel training they are then gathered from every process)
    learns_from_losses = False

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps, dtype=np.float64)

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        p = self.weights()
        p = p / p.sum()
        t = torch.multinomial(torch.from_numpy(p), batch_size, replacement=True, generator=generator)
        weights = torch.from_numpy(1.0 / (len(p) * p[t.numpy()])).float()
        return t.to(device), weights.to(device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the losses observed at ``timesteps`` (no-op for the uniform sampler)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformSampler(TimestepSampler):
    """t ∼ Uniform({0, …, T−1})  (Algorithm 1)."""


class LossSecondMomentResampler(TimestepSampler):
    """p_t ∝ √E[L_t²] over the last ``history`` losses per t, mixed with ``uniform_prob`` of uniform (IDDPM Eq. 18)."""

    learns_from_losses = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        for t, loss in zip(timesteps.tolist(), losses.detach().double().cpu().tolist()):
            if self.loss_counts[t] == self.history:
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def state_dict(self) -> dict:
        return {"loss_history": torch.from_numpy(self.loss_history.copy()), "loss_counts": torch.from_numpy(self.loss_counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = state["loss_history"].numpy().copy()
        self.loss_counts = state["loss_counts"].numpy().copy()


def create_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps)
    raise ValueError(f"unknown timestep sampler {name!r}; valid timestep samplers: {', '.join(TIMESTEP_SAMPLERS)}")


def default_timestep_sampler(loss_type: str) -> str:
    """IDDPM uses importance sampling for the pure L_vlb objective ("kl") and uniform t otherwise."""
    return "loss-second-moment" if loss_type == "kl" else "uniform"
