"""Method names as the CLI and the results use them."""

from __future__ import annotations

import re

import torch

from asmg.config import RunConfig
from asmg.methods.base import UpdateMethod
from asmg.methods.incremental import BatchUpdate, IncrementalUpdate
from asmg.methods.meta import AsmgMethod

GRU_VARIANTS = ("single", "multi", "unif", "full", "zero")
METHOD_HELP = {
    "iu": "incremental update: fine-tune on the newest period",
    "bu-W": "batch update: fine-tune on the union of the last W periods (bu-3, bu-5, bu-7)",
    "asmg-linear": "ASMG with a learned linear combination of the last k models",
    **{f"asmg-gru-{v}": f"ASMG with the per-coordinate GRU generator, '{v}' training" for v in GRU_VARIANTS},
}
DEFAULT_METHODS = ("iu", "bu-3", "asmg-linear", "asmg-gru-single", "asmg-gru-multi")


def make_method(name: str, cfg: RunConfig, device: torch.device) -> UpdateMethod:
    if name == "iu":
        return IncrementalUpdate(cfg, device)
    if match := re.fullmatch(r"bu-(\d+)", name):
        return BatchUpdate(cfg, device, int(match.group(1)))
    if name == "asmg-linear":
        return AsmgMethod(cfg, device, "linear")
    if (match := re.fullmatch(r"asmg-gru-(\w+)", name)) and match.group(1) in GRU_VARIANTS:
        return AsmgMethod(cfg, device, match.group(1))  # type: ignore[arg-type]
    raise ValueError(f"unknown method '{name}'; known: {', '.join(METHOD_HELP)}")


def parse_methods(text: str) -> list[str]:
    """Comma-separated names; every name is checked before anything runs."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no method given; known: " + ", ".join(METHOD_HELP))
    for name in names:
        make_method(name, RunConfig(), torch.device("cpu"))
    return names
