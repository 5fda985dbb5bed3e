"""Sobazaar (``Sobazaar-hashID.csv.gz``: Action, Timestamp, ItemID, UserID; hashed string ids).

Implicit, as in the ASMG paper: every interaction row is a positive whatever its Action (pass
``actions`` to keep only some). Ids are hashed with ``stable_ids`` so offline and streaming runs agree.
Timestamps are ISO 8601; naive times are taken as UTC (the authors' scripts used their machine's local
zone, which only shifts every event by the same offset). No categories.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from asmg.data._io import check_present, find_file, match_columns, parser_error, to_unix_seconds
from asmg.data.log import InteractionLog, make_log, stable_ids

FILES = ("Sobazaar-hashID.csv.gz", "Sobazaar-hashID.csv", "Data/Sobazaar-hashID.csv.gz")
PAGE = "https://github.com/hainguyen-telenor/Learning-to-rank-from-implicit-feedback"
HINT = f"get Data/Sobazaar-hashID.csv.gz from {PAGE} and put it in --data-dir"
ROLES = {"user": "UserID", "item": "ItemID", "ts": "Timestamp"}


def load_sobazaar(data_dir: str | Path, actions: Sequence[str] | None = None) -> InteractionLog:
    """Load the Sobazaar interaction log; header names are matched case-insensitively."""
    path = find_file(Path(data_dir), FILES, HINT)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise parser_error(path, exc, "comma-separated fields with a header Action,Timestamp,ItemID,UserID") \
            from exc
    wanted = dict(ROLES, **({"action": "Action"} if actions is not None else {}))
    names = match_columns(list(frame.columns), wanted, path)
    check_present(frame, path, [names[r] for r in ROLES], header_lines=1)
    events = pd.DataFrame({
        "user_id": stable_ids(frame[names["user"]].str.strip()),
        "item_id": stable_ids(frame[names["item"]].str.strip()),
        "ts": to_unix_seconds(frame[names["ts"]].str.strip(), path, names["ts"], header_lines=1),
        "label": np.float32(1.0),
    })
    if actions is not None:  # after parsing, so error lines still count every row
        events = events[frame[names["action"]].isin(list(actions)).to_numpy()]
    return make_log("sobazaar", events, None, implicit=True)
