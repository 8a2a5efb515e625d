"""fer-lightning: facial expression recognition with PyTorch Lightning and Hydra.

Public API (each with ``__all__``): :mod:`fer_lightning.models` (the LightningModules and ``load_model``),
:mod:`fer_lightning.data` (the DataModules), :mod:`fer_lightning.features` (the HOG/LBP extractor and ops).
Commands: ``fer-train``, ``fer-eval``, ``fer-predict``, ``fer-report`` (or ``python -m fer_lightning.<x>``).
Importing any module changes no global state (warnings filters, matplotlib backend, logging, torch settings).
"""

from importlib import metadata

from fer_lightning.errors import FERError

try:
    __version__ = metadata.version("fer-lightning")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["FERError", "__version__"]
