"""The lowest layer: what every other layer may use. Process ranks and per-image gathering across processes,
seeding as a function of ``(seed, epoch)``, the device ``auto`` means, optional dependencies, and the one registry
and "unknown option" check. Imports nothing of the package but :mod:`fer_lightning.errors`."""
