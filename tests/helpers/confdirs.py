"""Config dirs for tests that load chasquid.conf without starting a daemon."""

from __future__ import annotations

from pathlib import Path


def write_conf(config_dir: Path, text: str) -> Path:
    """Write chasquid.conf into config_dir (created if missing); the dir."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "chasquid.conf").write_text(text, encoding="utf-8")
    return config_dir


def make_config_dir(config_dir: Path, conf: str = "", domains: tuple[str, ...] = ()) -> Path:
    """A config dir with certs/, the given domain dirs and chasquid.conf; the dir."""
    for domain in domains:
        (config_dir / "domains" / domain).mkdir(parents=True, exist_ok=True)
    (config_dir / "certs").mkdir(parents=True, exist_ok=True)
    return write_conf(config_dir, conf)
