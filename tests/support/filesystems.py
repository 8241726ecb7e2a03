"""A real, small filesystem that a test can fill: a tmpfs of a chosen size mounted on a directory.

Mounting needs root (or ``CAP_SYS_ADMIN``); the development machines and CI run the suite as root, so the
fault is a real ``ENOSPC`` from the kernel. Where ``mount`` is refused the test skips with the reason, and
fails under ``CI=true``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.services import unavailable


@contextmanager
def small_filesystem(directory: Path, size_kib: int) -> Iterator[Path]:
    """``directory`` turned into a tmpfs of ``size_kib`` KiB for the duration; unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        unavailable("no mount command: cannot make a small filesystem to fill")
    assert mount is not None
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); run as root")
    try:
        yield directory
    finally:
        subprocess.run([shutil.which("umount") or "umount", "-l", str(directory)], capture_output=True, check=False)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Write a filler file in ``directory`` until at most ``leave_bytes`` remain free; the filler's path."""
    filler = directory / "filler.bin"
    with filler.open("wb") as handle:
        while (free := shutil.disk_usage(directory).free) > leave_bytes:
            try:
                handle.write(b"\0" * min(free - leave_bytes, 64 * 1024))
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:  # pragma: no cover - the loop stops before the volume is full
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
