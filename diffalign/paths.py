"""Locations of the project's shipped assets (configs, tiny model configs, tiny data)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset(*parts: str) -> Path:
    """Path of a shipped asset; a clear error when the package was installed without assets/."""
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: diffalign's assets/ folder ships with the source checkout; "
            "install from a checkout with `pip install -e .`.")
    return path
