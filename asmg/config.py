"""Hyper-parameters in one typed place. CLI flags and env vars (ASMG_<FLAG>) map onto these fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch is imported where it is used: `asmg` and the role settings read this module
    import torch

EMBEDDING_DIM = 8
HIDDEN_LAYERS = (20, 10)
HISTORY_LEN = 30  # items in a sample's history: the user's most recent positives before the event


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the flag and the variable."""


@dataclass(frozen=True)
class TrainConfig:
    """Base-model training (IU, BU, pretraining). Authors: Adam, batch 1024, 1 epoch, 10 to pretrain."""

    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 1
    pretrain_epochs: int = 10
    # "union" (the paper): pretrain_epochs shuffled epochs over the union of the pretraining periods, once the
    # last one closed. "progressive": pretrain_epochs epochs over each pretraining period as it arrives, from
    # the model so far, so the stream waits for one period's pretraining, not ten (a different model:
    # README "Pretraining as periods arrive")
    pretrain_mode: Literal["union", "progressive"] = "union"


@dataclass(frozen=True)
class MetaConfig:
    """The meta generator. Authors: k = 3, hidden 4, lr 1e-2, linear step weights, 1 epoch.

    ``output`` = "direct" is the paper's y = h w + b; "residual" adds the window's last input to it
    (zero-initialised output layer, so a fresh generator reproduces IU exactly).
    """

    k: int = 3
    hidden: int = 4
    lr: float = 1e-2
    epochs: int = 1
    batch_size: int = 1024
    output: Literal["direct", "residual"] = "direct"
    row_gather: bool = True
    normalize: bool = False  # scale each parameter by its RMS before the GRU, and back after
    # shrinkage: + correction_l2 * sum over parameters of mean((y - x)^2) / mean(x^2), where x is the
    # newest model fed at a step and y the generated one, so the generator departs from IU only where
    # the next period's data pays for it
    correction_l2: float = 0.0
    # residual output only: the correction is added to the newest model ("last") or to the mean of the
    # window's models so far ("mean"), see asmg.generator.GruGenerator
    anchor: Literal["last", "mean"] = "last"


@dataclass(frozen=True)
class ProtocolConfig:
    """The paper's protocol: pretrain on 1..10, update on 11..30, report tests on D_25..D_31."""

    n_periods: int = 31
    pretrain_periods: int = 10
    first_test_period: int = 25
    split: str = "equal"  # "equal" (N equal-count periods) or a pandas frequency such as "1D"
    history_len: int = HISTORY_LEN


@dataclass(frozen=True)
class GuardConfig:
    """The serving guard: candidates run side by side; the best recent record serves.

    ``decay`` weighs the record (score = decay * score + (1 - decay) * newest AUC); a challenger takes
    over only when its score leads the champion's by more than ``margin`` (AUC points), against flapping.
    The first candidate serves until a record says otherwise: plain IU, so ASMG has to earn serving.
    Decay and margin were chosen on validation periods (docs/asmg-candidates.md).
    """

    candidates: tuple[str, ...] = ("iu", "asmg-gru-multi")
    decay: float = 0.5
    margin: float = 0.001


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        guard = data.get("guard", {})  # configurations written before the guard existed have none
        guard = GuardConfig(**{**guard, "candidates": tuple(guard["candidates"])} if guard else {})
        return cls(train=TrainConfig(**data["train"]), meta=MetaConfig(**data["meta"]),
                   protocol=ProtocolConfig(**data["protocol"]), guard=guard, seed=data["seed"],
                   device=data["device"])

    def with_seed(self, seed: int) -> RunConfig:
        return replace(self, seed=seed)


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA when torch sees it, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seeded(seed: int, period: int, purpose: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, period, purpose): reruns and restarts repeat exactly."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + period * 1_009 + purpose) % (2**63 - 1))
    return gen
