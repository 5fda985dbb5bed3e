"""Named hyper-parameter sets. ``authors`` is the paper's, kept as it is; dataset presets were chosen on
validation periods only (ml-100k: tested on D_18..D_23, never on D_25..D_31): the base training by IU's
validation AUC (docs/base-settings.md, asmg.tuning.choose_base), the generator among the candidates of
docs/asmg-candidates.md (scripts/tune_asmg.py), the serving guard's settings in asmg.config.GuardConfig."""

from __future__ import annotations

from dataclasses import replace

from asmg.config import MetaConfig, ProtocolConfig, RunConfig, TrainConfig

AUTHORS = RunConfig()
# Chosen on ml-100k's validation periods (scripts: asmg.tuning.choose_base, scripts/tune_asmg.py; README):
CHOSEN_BASE = TrainConfig(lr=1e-2, batch_size=256, epochs=3)
CHOSEN_META = MetaConfig(output="residual", lr=3e-3)
# pretraining, chosen after the rest on the same validation periods (README "Pretraining as periods arrive";
# IU, 5 seeds): 3 epochs over each pretraining period as it arrives 0.7048, the paper's 10 epochs over their
# union 0.7025, 3 over the union 0.7015, progressive with 10 epochs 0.6892 and with 1 epoch 0.6995
ML100K = RunConfig(train=replace(CHOSEN_BASE, pretrain_epochs=3, pretrain_mode="progressive"), meta=CHOSEN_META)
GENERAL = RunConfig(train=CHOSEN_BASE, meta=CHOSEN_META)  # what `auto` starts from (the paper's pretraining), and
# serves as is where no validation periods exist up front
GENERAL_NOTE = ("--preset auto: ml-100k's chosen settings (base lr 1e-2, batch 256, 3 epochs per period, the "
                "paper's pretraining; residual generator, meta lr 3e-3), the base to be re-chosen on the dataset's own "
                "validation periods")
# 17 periods of 100,000 samples: pretrain on 1-5 (3 epochs: 500k samples need fewer passes than ml-100k's
# 32k), update on 6-16, test on 11-17 (seven test periods, as the paper), validate on 6-9
SYNTHETIC_LARGE_PROTOCOL = ProtocolConfig(n_periods=17, pretrain_periods=5, first_test_period=11)
SYNTHETIC_LARGE = RunConfig(train=TrainConfig(lr=1e-2, batch_size=256, epochs=1, pretrain_epochs=3), meta=CHOSEN_META,
                            protocol=SYNTHETIC_LARGE_PROTOCOL)

PRESETS: dict[str, tuple[RunConfig, str]] = {
    "authors": (AUTHORS, "the authors' hyper-parameters (base lr 1e-3, batch 1024, 1 epoch; k=3, H=4, meta lr 1e-2, "
                "direct generator output)"),
    "ml-100k": (ML100K, "base lr 1e-2, batch 256, 3 epochs per period (IU's best of 10 on validation periods 18-23); "
                "pretraining: 3 epochs over each pretraining period as it arrives (IU's best of 5 there; seeds 0-4); "
                "generator: residual output, meta lr 3e-3 (the best ASMG-GRU multi of 12 candidates there; seeds 0,1); "
                "test periods unseen"),
    "synthetic-large": (SYNTHETIC_LARGE, "17 periods of 100k samples (pretrain 1-5 for 3 epochs, test 11-17); base lr "
                        "1e-2, batch 256, 1 epoch (IU's best of 3 on validation periods 6-9); generator as ml-100k's"),
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
