"""Where the Hydra configs live: ``conf/`` beside the package (editable install, source checkout) or
``fer_lightning/conf`` inside it (wheel install)."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # the fer_lightning package


def config_dir() -> str:
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"fer-lightning's Hydra configs were not found in {_PKG / 'conf'} or {_PKG.parent / 'conf'}"
    )
