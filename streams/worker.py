"""What every worker process of the stream roles shares: the fail-stop exit, the stack dump on SIGUSR1."""

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


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` writes every thread's Python stack to the role's stderr (its log): how an operator,
    or a test that timed out, sees where a worker that stopped making progress is waiting. faust's worker (the
    trainer) installs its own SIGUSR1 handler over this one, which dumps its asyncio tasks instead."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
