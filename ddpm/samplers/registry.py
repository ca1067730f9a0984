"""The sampler families: every :class:`~ddpm.samplers.base.Sampler` subclass in a module of
``ddpm/samplers/families/``, found there (a new family is a new module; nothing else lists them). No torch."""

from __future__ import annotations

import importlib
import pkgutil

from . import families
from .base import Sampler


def _discover() -> dict[str, type[Sampler]]:
    found = []
    for module in pkgutil.iter_modules(families.__path__):
        loaded = importlib.import_module(f"{families.__name__}.{module.name}")
        found += [value for value in vars(loaded).values()
                  if isinstance(value, type) and issubclass(value, Sampler) and value is not Sampler
                  and value.__module__ == loaded.__name__]
    found.sort(key=lambda family: (family.order, family.name))
    names = [family.name for family in found]
    if len(set(names)) != len(names):
        raise ImportError(f"two sampler families share a name: {names}")
    return {family.name: family for family in found}


#: Name → family, in their order.
FAMILIES: dict[str, type[Sampler]] = _discover()
#: The families' names: the values of a point's ``sampler`` (the first is the default).
SAMPLERS: tuple[str, ...] = tuple(FAMILIES)
#: Every skip some family takes.
SKIPS: tuple[str, ...] = tuple(dict.fromkeys(skip for family in FAMILIES.values() for skip in family.skips))


def sampler_family(name: str, key: str = "--sampler") -> type[Sampler]:
    """The family called ``name``; an unknown name is refused naming ``key`` and the valid ones."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"{key}: unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}") from None
