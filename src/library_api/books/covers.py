"""Cover images: recognised by their bytes (never by name), size-limited, stored under random names.

Only JPEG and PNG are accepted. A stored name is 32 random hex digits plus the extension of the detected
type, so nothing a client sends ever becomes part of a path.

A file is written under a temporary ``.NAME.part`` name and renamed into place, so a reader never sees half a
cover; whatever fails on the way (a full volume, a spent quota, a file-size limit, any other I/O error, a
cancelled request) removes the temporary file. A lack of space is the client's 507 ``insufficient-storage``
problem, not a 500.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio import Path as AsyncPath

from library_api.problems import InsufficientStorage

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Errors that mean "no room": a full volume, a spent quota, a per-process file-size limit."""

STORAGE_RETRY_AFTER = 60
"""Seconds a client is asked to wait after a 507: space comes back when an operator frees it."""


@dataclass(frozen=True, slots=True)
class ImageKind:
    """A recognised image format."""

    content_type: str
    extension: str


JPEG = ImageKind("image/jpeg", ".jpg")
PNG = ImageKind("image/png", ".png")


def detect_image(head: bytes) -> ImageKind | None:
    """The format of an image from its first bytes, or ``None`` for anything that is not JPEG or PNG."""
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    return None


class CoverStore:
    """Files of cover images under ``UPLOAD_DIR/covers``."""

    def __init__(self, upload_dir: Path) -> None:
        self.directory = upload_dir / "covers"

    async def save(self, data: bytes, kind: ImageKind) -> str:
        """Write ``data`` atomically under a fresh random name and return that name.

        Raises :class:`InsufficientStorage` when the volume has no room; no temporary file is left behind on
        any failure.
        """
        directory = AsyncPath(self.directory)
        name = secrets.token_hex(16) + kind.extension
        temporary = directory / f".{name}.part"
        try:
            await directory.mkdir(parents=True, exist_ok=True)
            await temporary.write_bytes(data)
            await temporary.rename(directory / name)
        except BaseException as exc:
            await _discard(temporary)
            if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
                raise InsufficientStorage(
                    f"The upload volume has no room for this image ({os.strerror(exc.errno)}); retry later.",
                    retry_after=STORAGE_RETRY_AFTER,
                ) from exc
            raise
        return name

    def path(self, name: str) -> Path:
        """The file behind a stored name; names are only ever ones :meth:`save` produced."""
        return self.directory / os.path.basename(name)

    async def delete(self, name: str | None) -> None:
        """Remove a stored file if it exists."""
        if name:
            await AsyncPath(self.path(name)).unlink(missing_ok=True)


async def _discard(temporary: AsyncPath) -> None:
    """Remove a temporary file, even while the task is being cancelled (the unlink itself is quick)."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(OSError):
            await temporary.unlink(missing_ok=True)
