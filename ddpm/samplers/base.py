"""The interface every sampler family implements, and the subsequence of steps most of them visit.

A family is a subclass of :class:`Sampler` in a module of its own under ``ddpm/samplers/families/``. What it declares
(class attributes and class methods: no tensors, no torch) serves the config checks, the names and the report; an
instance, made for one process and one point, does the stepping, as diffusers' schedulers do: ``timesteps`` after
:meth:`Sampler.set_timesteps`, then :meth:`Sampler.step` once per step from the top, given the network's output,
keeping whatever it needs between steps (a multistep solver's earlier predictions) on itself.

Steps are 0-based indices of the T-step process (index ``t`` is the paper's step t + 1). A sampler visits the
ascending subsequence τ_1 < … < τ_S (:attr:`Sampler.timesteps`) from the top: index i = S−1 first, 0 last; the
network is called with τ_i. This module imports neither torch nor the rest of the package but its vocabulary.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

#: ``quadratic`` ends at this fraction of T (ermongroup/ddim: ``np.linspace(0, np.sqrt(T * 0.8), S) ** 2``).
QUADRATIC_END = 0.8


def timestep_subsequence(T: int, steps: int | None, skip: str = "uniform") -> list[int]:
    """The 0-based steps τ_1 < … < τ_S a sampler visits out of T (DDIM §4.2, Appendix D.2).

    ``uniform``: ⌊i·T/S⌋ for i = 0 … S−1, which is ermongroup/ddim's ``range(0, T, T // S)`` (and diffusers'
    "leading" spacing) when S divides T. ``quadratic``: ⌊(i·√(0.8·T)/(S−1))²⌋, as ermongroup/ddim; where small steps
    repeat (S = 100 of T = 1000 visits 96 distinct steps; S = 50, 49), the repeats are dropped: in ermongroup/ddim a
    repeated step moves x from a noise level to the same level, a network call that changes nothing. ``strided``:
    Improved DDPM's strided sampling (§4), improved-diffusion's ``space_timesteps(T, "S")``: the first step, the last
    and S − 2 evenly between, round(c) for c = 0, s, 2s, … with s = (T − 1)/(S − 1) added up as it does. S = T (or
    ``steps`` None) is every step. (A family may take skips of its own: :meth:`Sampler.visited`.)"""
    S = T if steps is None else int(steps)
    if not 1 <= S <= T:
        raise ValueError(f"cannot pick S = {S} sampling steps out of T = {T}; need 1 <= S <= T")
    if S == T:
        return list(range(T))
    if skip == "uniform":
        return [i * T // S for i in range(S)]
    if skip == "quadratic":
        points = np.linspace(0, np.sqrt(T * QUADRATIC_END), S) ** 2
        return sorted({int(p) for p in points})
    if skip == "strided":
        stride, position, steps = (T - 1) / (S - 1) if S > 1 else 1.0, 0.0, []
        for _ in range(S):
            steps.append(round(position))
            position += stride
        return steps
    raise ValueError(f"unknown skip {skip!r}; valid skips: {', '.join(Sampler.skips)}")


class Sampler:
    """A sampler family: what it declares (class level) and, as an instance, the sampler of one ``point`` on one
    ``diffusion``."""

    #: The family's name: the value of a point's ``sampler``.
    name: ClassVar[str]
    #: What it is, with its paper and equation: the command line's help and the docs.
    summary: ClassVar[str]
    #: Its own point keys, beyond those every family takes (sampler, steps, skip, clip), and their defaults (e.g.
    #: DDIM's η).
    keys: ClassVar[dict] = {}
    #: The skips it takes; the first is its default.
    skips: ClassVar[tuple[str, ...]] = ("uniform", "quadratic", "strided")
    #: Whether it clips x̂_0 to [-1, 1] before each step unless the point says otherwise.
    clip: ClassVar[bool] = True
    #: Where the registry lists it (the order of the command line's choices and the docs).
    order: ClassVar[int] = 100

    # ---------------------------------------------------------------------------------------- what it declares
    @classmethod
    def defaults(cls) -> dict:
        """The value of every key the family takes, where a point leaves it out."""
        return {"skip": cls.skips[0], "clip": cls.clip, **cls.keys}

    @classmethod
    def check_point(cls, point, key) -> None:
        """Refuse a point this family cannot sample, naming the key (``key(name)`` is the key's place). The base
        refuses a skip it does not take and another family's key; a family checks its own keys' values on top."""
        if point.skip not in cls.skips:
            raise ValueError(f"{key('skip')}: unknown skip {point.skip!r} for the {cls.name} sampler; valid skips: "
                             f"{', '.join(cls.skips)}")
        from .registry import FAMILIES

        for other in FAMILIES.values():
            for name in other.keys:
                if name not in cls.keys and getattr(point, name) is not None:
                    takes = ", ".join(cls.keys) or "none of its own"
                    raise ValueError(f"{key(name)}: {name} is the {other.name} sampler's key; the {cls.name} sampler "
                                     f"takes {takes}")

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Its own keys' command-line flags (``--<key>``, default None: the family's default)."""

    @classmethod
    def name_parts(cls, point) -> tuple[list[str], list[str]]:
        """The parts of the point's name before its S and skip, and after them (its own keys' values)."""
        return [], []

    @classmethod
    def point_name(cls, point) -> str:
        """The point's name, e.g. ``ddim-eta0-S10-quadratic``: the family, its keys, S and skip (when S is given),
        and the clipping where it is not the family's default."""
        lead, tail = cls.name_parts(point)
        parts = [cls.name, *lead]
        if point.steps is not None:
            parts += [f"S{point.steps}", point.skip]
        parts += tail
        if point.clip != cls.clip:
            parts.append("clip" if point.clip else "noclip")
        return "-".join(parts)

    @classmethod
    def label(cls, point) -> str:
        """The point's row in DDIM Table 1's layout (the report's sampler table and figure)."""
        return cls.name

    @classmethod
    def published_match(cls, point) -> dict:
        """The columns of ``config/published.csv`` (beyond sampler and S) that name this point's published row."""
        return {name: getattr(point, name) for name in cls.keys}

    @classmethod
    def visited(cls, T: int, point) -> list[int]:
        """The ascending steps τ_1 < … < τ_S the point visits out of T."""
        return timestep_subsequence(T, point.steps, point.skip)

    # ---------------------------------------------------------------------------------------- what it does
    def __init__(self, diffusion, point):
        self.point = point
        self.set_timesteps(diffusion)

    def set_timesteps(self, diffusion) -> None:
        """Pick the steps (:attr:`timesteps`) and the process the point samples (:attr:`process`: ``diffusion``
        respaced to them, IDDPM §4: β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}, its variance replaced where the family says)."""
        self.timesteps = self.visited(diffusion.num_timesteps, self.point)
        self.process = diffusion.respaced(self.timesteps, var_type=self.variance_override(diffusion))

    def variance_override(self, diffusion) -> str | None:
        """The variance the respaced process takes instead of the network's (None: the network's). A family that
        uses only the network's mean returns one where the network learns its variance."""
        return "fixedsmall" if diffusion.learns_variance else None

    def step(self, model_output, index: int, sample, generator=None) -> dict:
        """From x at step ``index`` (of :attr:`timesteps`; S−1 first) to x at the step below, given the network's
        output there: ``{"sample": x below, "pred_xstart": x̂_0}``."""
        raise NotImplementedError
