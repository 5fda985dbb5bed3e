"""Method names as the CLI and the results use them."""

from __future__ import annotations

import re

import torch

from asmg.config import RunConfig
from asmg.methods.base import UpdateMethod
from asmg.methods.guard import GuardedMethod
from asmg.methods.incctr import IncCtr
from asmg.methods.incremental import BatchUpdate, IncrementalUpdate
from asmg.methods.meta import AsmgMethod
from asmg.methods.sml import MfIncrementalUpdate, Sml, SmlMf
from asmg.methods.spmf import Spmf

GRU_VARIANTS = ("single", "multi", "unif", "full", "zero")
METHOD_HELP = {
    "iu": "incremental update: fine-tune on the newest period",
    "bu-W": "batch update: fine-tune on the union of the last W periods (bu-3, bu-5, bu-7)",
    "spmf": "fine-tune on the newest period plus a rank-weighted replay from a reservoir of past samples",
    "incctr": "fine-tune with the previous model as a distillation teacher (weight 0.2)",
    "sml": "sequential meta-learning: a CNN transfer fuses the previous and the fine-tuned model",
    "sml-mf": "SML on a matrix-factorisation base model",
    "mf": "incremental update of a matrix-factorisation base model",
    "asmg-linear": "ASMG with a learned linear combination of the last k models",
    **{f"asmg-gru-{v}": f"ASMG with the per-coordinate GRU generator, '{v}' training" for v in GRU_VARIANTS},
    "asmg-guarded": "serving guard: ASMG and IU (and optionally BU-w) side by side, the best recent record serves",
}
METHOD_HELP["all"] = "every method of the paper's table, in its order"
DEFAULT_METHODS = ("iu", "bu-3", "asmg-linear", "asmg-gru-single", "asmg-gru-multi")
ALL_METHODS = ("iu", "bu-3", "bu-5", "bu-7", "spmf", "incctr", "sml", "sml-mf", "asmg-linear", "asmg-gru-single",
               "asmg-gru-multi")
SIMPLE = {"iu": IncrementalUpdate, "spmf": Spmf, "incctr": IncCtr, "sml": Sml, "sml-mf": SmlMf,
          "mf": MfIncrementalUpdate}


def make_method(name: str, cfg: RunConfig, device: torch.device) -> UpdateMethod:
    if name in SIMPLE:
        return SIMPLE[name](cfg, device)
    if match := re.fullmatch(r"bu-(\d+)", name):
        return BatchUpdate(cfg, device, int(match.group(1)))
    if name == "asmg-guarded":
        return GuardedMethod(cfg, device, make_method)
    if name == "asmg-linear":
        return AsmgMethod(cfg, device, "linear")
    if (match := re.fullmatch(r"asmg-gru-(\w+)", name)) and match.group(1) in GRU_VARIANTS:
        return AsmgMethod(cfg, device, match.group(1))  # type: ignore[arg-type]
    raise ValueError(f"unknown method '{name}'; known: {', '.join(METHOD_HELP)}")


def parse_methods(text: str) -> list[str]:
    """Comma-separated names (``all`` = the paper's table); every name is checked before anything runs."""
    names: list[str] = []
    for token in (n.strip().lower() for n in text.split(",") if n.strip()):
        names.extend(ALL_METHODS if token == "all" else [token])
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no method given; known: " + ", ".join(METHOD_HELP))
    for name in names:
        make_method(name, RunConfig(), torch.device("cpu"))
    return names
