"""Named hyper-parameter sets. ``authors`` is the paper's; dataset presets were chosen on validation
periods only (tested on D_18..D_23, never on D_25..D_31): see scripts/tune_ml100k.py and README."""

from __future__ import annotations

from dataclasses import replace

from asmg.config import MetaConfig, ProtocolConfig, RunConfig, TrainConfig

AUTHORS = RunConfig()
# Chosen on ml-100k's validation periods (scripts: asmg.tuning.choose_base, scripts/tune_asmg.py; README):
CHOSEN_BASE = TrainConfig(lr=1e-2, batch_size=256, epochs=3)
CHOSEN_META = MetaConfig(output="residual")
ML100K = RunConfig(train=CHOSEN_BASE, meta=CHOSEN_META)
GENERAL = ML100K  # what `auto` starts from, and serves as is where no validation periods exist up front
GENERAL_NOTE = ("--preset auto: ml-100k's chosen settings (base lr 1e-2, batch 256, 3 epochs per period; residual "
                "generator), the base to be re-chosen on the dataset's own validation periods")
# 17 periods of 100,000 samples: pretrain on 1-5 (3 epochs: 500k samples need fewer passes than ml-100k's
# 32k), update on 6-16, test on 11-17 (seven test periods, as the paper), validate on 6-9
SYNTHETIC_LARGE_PROTOCOL = ProtocolConfig(n_periods=17, pretrain_periods=5, first_test_period=11)
SYNTHETIC_LARGE = RunConfig(train=TrainConfig(pretrain_epochs=3), protocol=SYNTHETIC_LARGE_PROTOCOL)

PRESETS: dict[str, tuple[RunConfig, str]] = {
    "authors": (AUTHORS, "the authors' hyper-parameters (base lr 1e-3, batch 1024, k=3, H=4, meta lr 1e-2)"),
    "ml-100k": (ML100K, "authors' base settings (lr 1e-3, batch 1024, k=3, H=4, meta lr 1e-2) with a residual "
                "generator output (starts as IU) and meta batch 256: the best ASMG-GRU multi lift over IU among 19 "
                "candidates on validation periods 18-23 (seeds 0,1; scripts/tune_ml100k.py); test periods unseen"),
    "synthetic-large": (SYNTHETIC_LARGE, "synthetic-large protocol (17 periods: pretrain 1-5 for 3 epochs, "
                        "test 11-17) with the authors' other settings"),
}


def preset(name: str) -> tuple[RunConfig, str]:
    """A named preset; ``auto`` starts from GENERAL and gets its base settings where data is at hand (the
    offline commands); a streaming trainer, which has no validation periods up front, keeps GENERAL's."""
    if name == AUTO:
        return GENERAL, GENERAL_NOTE
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; known: {', '.join([*PRESETS, AUTO])}")
    return PRESETS[name]


AUTO = "auto"  # base settings chosen on the dataset's own validation periods (asmg.tuning.auto_base)


def default_preset(dataset: str) -> str:
    """A dataset's own preset, else ``auto``: no comparison runs against an untuned base by accident."""
    return dataset if dataset in PRESETS else AUTO


def override(cfg: RunConfig, train: dict, meta: dict) -> RunConfig:
    """Apply the flags a user set explicitly (None = keep the preset's value)."""
    train = {k: v for k, v in train.items() if v is not None}
    meta = {k: v for k, v in meta.items() if v is not None}
    return replace(cfg, train=replace(cfg.train, **train), meta=replace(cfg.meta, **meta))


__all__ = ["PRESETS", "MetaConfig", "TrainConfig", "default_preset", "override", "preset"]
