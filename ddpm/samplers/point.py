"""The sampling axis: a point (:class:`SamplerPoint`: sampler × S × skip × its family's keys × clip), a config's
``sampling`` section crossed into points (:func:`expand_sampling`), and ``sampler.json``, the file that records a
point in its folder. Torch-free: the workflow checks its points while it parses the config."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..io import read_json, write_json
from .registry import FAMILIES, sampler_family


def as_list(value) -> list:
    """A config value that may be given as one value or a list of them (a sweep's axis, a sampling row's key), as a
    list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass(frozen=True)
class SamplerPoint:
    """One way to sample a trained setting: a point of the sampling axis (sampler × S × skip × its family's keys ×
    clip). ``sampler`` names a family of :mod:`ddpm.samplers`, which says what the other keys mean and fills in
    those left out (None): its ``skip`` (which S of the T steps), its own keys (DDIM's ``eta``, the ancestral
    sampler's ``variance``; another family's key stays None) and whether it ``clip`` s x̂_0 to [-1, 1].

    ``steps`` is S, the number of reverse steps (None: every step of the process; S = T visits every step whichever
    ``skip``). Its name, e.g. ``ddim-eta0-S10-quadratic``, names its folder ``<setting>/samplers/<name>/`` and its
    MLflow run; ``sampler.json`` there records it."""

    sampler: str = "ancestral"
    steps: int | None = None
    skip: str | None = None
    eta: float | None = None
    variance: str | None = None
    clip: bool | None = None

    def __post_init__(self):
        family = FAMILIES.get(self.sampler) if isinstance(self.sampler, str) else None
        for key, default in (family.defaults() if family else {}).items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)
        if self.eta is not None and not isinstance(self.eta, bool) and isinstance(self.eta, (int, float)):
            object.__setattr__(self, "eta", float(self.eta))

    @property
    def family(self):
        """The point's sampler family (:class:`ddpm.samplers.base.Sampler`)."""
        return sampler_family(self.sampler)

    def check(self, where: str = "sampling", T: int | None = None) -> "SamplerPoint":
        """Refuse what no sampler can do, naming the key: ``where``'s (the config's place of this point, e.g.
        ``sampling[1]``), or the command line's flag where ``where`` is empty."""
        def key(name):
            return f"{where}.{name}" if where else f"--{name}"

        family = sampler_family(self.sampler, key("sampler"))
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"{key('steps')}: S must be an integer >= 1 (or null for every step), got {self.steps!r}")
        if T is not None and self.steps is not None and self.steps > T:
            raise ValueError(f"{key('steps')}: S = {self.steps} is more than the T = {T} steps of the process")
        family.check_point(self, key)
        if not isinstance(self.clip, bool):
            raise ValueError(f"{key('clip')}: true or false, got {self.clip!r}")
        return self

    @property
    def name(self) -> str:
        return self.family.point_name(self)

    def axes(self) -> dict:
        return asdict(self)

    def num_steps(self, T: int) -> int:
        """S on a process of T steps (before ``quadratic`` drops repeated steps: see ``ddpm.samplers``)."""
        return T if self.steps is None else self.steps

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerPoint":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known) - {"name"})
        if unknown:
            raise ValueError(f"unknown sampler key {unknown}; valid keys: {', '.join(known)}")
        return cls(**{k: d[k] for k in known if k in d})


def network_evaluations(T: int, point: SamplerPoint) -> int:
    """Network calls per image of ``point`` on a process of T steps: the length of its subsequence."""
    return len(point.family.visited(T, point))


#: The sampling of a config without a ``sampling`` section: DDPM's ancestral sampler on every step.
DEFAULT_SAMPLING = ({"sampler": "ancestral"},)
#: The file in each sampler point's folder that records it.
SAMPLER_FILE = "sampler.json"
SAMPLER_KEYS = tuple(f.name for f in fields(SamplerPoint))


def expand_sampling(config: dict, T_values=()) -> list[SamplerPoint]:
    """The sampler points of the config's ``sampling`` section, in order: each row is crossed over its lists (a row
    gives a value or a list per key), the rows are concatenated. Every point is checked against every T in
    ``T_values`` (S ≤ T); a bad value or a point listed twice is refused, naming the key."""
    rows = config.get("sampling") or DEFAULT_SAMPLING
    points = []
    for i, row in enumerate(rows):
        where = f"sampling[{i}]"
        unknown = sorted(set(row) - set(SAMPLER_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown}; valid keys: {', '.join(SAMPLER_KEYS)}")
        keys = [k for k in SAMPLER_KEYS if k in row]
        for values in itertools.product(*(as_list(row[k]) for k in keys)):
            point = SamplerPoint(**dict(zip(keys, values)))
            point.check(where)
            for T in T_values:
                point.check(where, T)
            points.append(point)
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sampling: the sampler point {duplicates[0]!r} is listed twice")
    return points


def write_sampler(folder: str | Path, point: SamplerPoint, cost: dict | None = None, filename: str = SAMPLER_FILE
                  ) -> Path:
    """Write ``sampler.json``: the point's name and keys, and what its samples cost (``cost``: network evaluations
    per image, images per second)."""
    path = Path(folder) / filename
    write_json(path, {"name": point.name, **point.axes(), **(cost or {})})
    return path


def read_sampler_file(path: str | Path) -> SamplerPoint:
    """The sampler point recorded in ``path`` (a ``sampler.json``)."""
    path = Path(path)
    try:
        recorded = read_json(path)
        point = SamplerPoint.from_dict({k: v for k, v in recorded.items() if k in SAMPLER_KEYS}).check(str(path))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read the sampler point from {path}: {err}") from err
    if recorded.get("name") != point.name:
        raise ValueError(f"{path} names the sampler point {recorded.get('name')!r}, but its keys make {point.name!r}")
    return point
