"""What every worker process of the stream roles shares: the fail-stop exit."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

FAIL_STOP_EXIT = 70


def fail_stop(exc: BaseException, where: str) -> None:
    """An unexpected error in a worker: exit at once rather than go on past the record or batch (faust
    would restart the agent after it, skipping it). A supervisor restarts the worker, which redoes it."""
    from asmg.logs import flush_native_stderr

    log.critical("%s failed; stopping the worker so the record is redone after a restart", where,
                 exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    flush_native_stderr()
    os._exit(FAIL_STOP_EXIT)
