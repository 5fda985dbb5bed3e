"""Named hyper-parameter sets. ``authors`` is the paper's; dataset presets were chosen on validation
periods only (tested on D_18..D_23, never on D_25..D_31): see scripts/tune_ml100k.py and README."""

from __future__ import annotations

from dataclasses import replace

from asmg.config import MetaConfig, RunConfig, TrainConfig

PRESETS: dict[str, tuple[RunConfig, str]] = {
    "authors": (RunConfig(), "the authors' hyper-parameters (base lr 1e-3, batch 1024, k=3, H=4, meta lr 1e-2)"),
}


def preset(name: str) -> tuple[RunConfig, str]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def default_preset(dataset: str) -> str:
    return dataset if dataset in PRESETS else "authors"


def override(cfg: RunConfig, train: dict, meta: dict) -> RunConfig:
    """Apply the flags a user set explicitly (None = keep the preset's value)."""
    train = {k: v for k, v in train.items() if v is not None}
    meta = {k: v for k, v in meta.items() if v is not None}
    return replace(cfg, train=replace(cfg.train, **train), meta=replace(cfg.meta, **meta))


__all__ = ["PRESETS", "MetaConfig", "TrainConfig", "default_preset", "override", "preset"]
