"""Flags -> :class:`~asmg.config.RunConfig`: the ONE mapping of the run options onto a configuration.

``asmg experiment``, ``asmg study ablation|sensitivity`` and the trainer role (streams/trainer/agent.py, from
its ``ASMG_*`` settings) all call :func:`run_config`: the dataset's preset (or the one named), then every
option the user set (None keeps the preset's value). A new hyper-parameter flag is added here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from asmg.config import RunConfig

TRAIN_FLAGS = {"lr": "lr", "batch_size": "batch_size", "epochs": "epochs", "pretrain_epochs": "pretrain_epochs",
               "pretrain_mode": "pretrain_mode"}
META_FLAGS = {"k": "k", "hidden": "hidden", "meta_lr": "lr", "meta_epochs": "epochs",
              "meta_batch_size": "batch_size", "output": "output"}
PROTOCOL_FLAGS = {"periods": "n_periods", "split": "split", "pretrain_periods": "pretrain_periods",
                  "first_test_period": "first_test_period", "history_len": "history_len"}
RUN_FLAGS = ("seed", "device")
FLAGS = (*TRAIN_FLAGS, *META_FLAGS, *PROTOCOL_FLAGS, *RUN_FLAGS)
OUTPUTS = ("direct", "residual")
PRETRAIN_MODES = ("union", "progressive")


def pick(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run flags among ``values`` (a command's options, a settings object's fields)."""
    return {name: values[name] for name in FLAGS if name in values}


def run_config(dataset: str, preset: str | None = None, **flags: Any) -> tuple[RunConfig, str]:
    """The preset for ``dataset`` (or ``preset``) with the flags set (names: :data:`FLAGS`), and the preset's
    note. Raises ValueError for an unknown preset, flag or generator output."""
    from asmg.presets import default_preset, override
    from asmg.presets import preset as get_preset

    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown run flags {sorted(unknown)}")
    if flags.get("output") not in (None, *OUTPUTS):
        raise ValueError("--output must be 'direct' or 'residual'")
    if flags.get("pretrain_mode") not in (None, *PRETRAIN_MODES):
        raise ValueError("--pretrain-mode must be 'union' or 'progressive'")
    cfg, note = get_preset(preset or default_preset(dataset))
    cfg = override(cfg, {field: flags.get(flag) for flag, field in TRAIN_FLAGS.items()},
                   {field: flags.get(flag) for flag, field in META_FLAGS.items()})
    protocol = {field: flags[flag] for flag, field in PROTOCOL_FLAGS.items() if flags.get(flag) is not None}
    run = {name: flags[name] for name in RUN_FLAGS if flags.get(name) is not None}
    return replace(cfg, protocol=replace(cfg.protocol, **protocol), **run), note
