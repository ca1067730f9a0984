"""One module per sampler family; :mod:`ddpm.samplers.registry` finds them here."""
