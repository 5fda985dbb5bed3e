"""``python -m asmg_cli``: the ``asmg`` command (how the local harness starts worker processes)."""

from asmg_cli.main import main

main()
