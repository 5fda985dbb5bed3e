"""C sources of this package built on first use with the system's C compiler, cached, and loaded with ctypes.

Shared by asmg/cpu_kernels.py (training kernels) and asmg/event_parse.py (the event parser); torch-free, so
the stream roles that do not train load their kernel without importing torch. The cache key covers the
source, the compiler, the flags and the CPU, and the cache folder must be private to this user.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class BuildUnavailable(OSError):
    """No C compiler: callers take their pure-Python (or torch) path."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asmg" / "kernels"


def cpu_flags() -> str:
    """-march=native builds for this CPU: a cache shared with another CPU model must not reuse it."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    return next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")


def private_dir(folder: Path) -> Path:
    """Ours alone: a library another user could write to would run their code in this process."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(f"{folder} is not private to this user")
    return folder


def build(source: Path, flags: tuple[str, ...], prefix: str) -> ctypes.CDLL:
    """``source`` compiled with ``flags`` (cached as ``<prefix>-<digest>.so``) and loaded. Raises
    :class:`BuildUnavailable` without a compiler, OSError or SubprocessError when the build fails."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise BuildUnavailable("no C compiler found")
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join((compiler, *flags, cpu_flags())).encode()).hexdigest()[:16]
    folder = private_dir(cache_dir())
    target = folder / f"{prefix}-{digest}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([compiler, *flags, "-o", str(out), str(source), "-lm"], check=True, capture_output=True,
                           timeout=120)
            os.replace(out, target)  # atomic: concurrent builders each install a complete file
    return ctypes.CDLL(str(target))


def load(source: Path, flags: tuple[str, ...], prefix: str, switch: str, fallback: str) -> ctypes.CDLL | None:
    """The built library, or None when the environment variable ``switch`` is 0, without a compiler, or when the
    build fails; a warning then says what runs instead (``fallback``)."""
    if os.environ.get(switch, "1") == "0":
        return None
    try:
        return build(source, flags, prefix)
    except BuildUnavailable:
        log.warning("no C compiler found: %s", fallback)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        log.warning("%s unavailable (%s %s): %s", source.name, err, detail.decode(errors="replace")[-2000:], fallback)
    return None
