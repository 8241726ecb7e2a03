"""Cover images: recognised by their bytes (never by name), size-limited, stored under random names.

Only JPEG and PNG are accepted. A stored name is 32 random hex digits plus the extension of the detected
type, so nothing a client sends ever becomes part of a path.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from anyio import Path as AsyncPath

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
        """Write ``data`` atomically under a fresh random name and return that name."""
        directory = AsyncPath(self.directory)
        await directory.mkdir(parents=True, exist_ok=True)
        name = secrets.token_hex(16) + kind.extension
        temporary = directory / f".{name}.part"
        await temporary.write_bytes(data)
        await temporary.rename(directory / name)
        return name

    def path(self, name: str) -> Path:
        """The file behind a stored name; names are only ever ones :meth:`save` produced."""
        return self.directory / os.path.basename(name)

    async def delete(self, name: str | None) -> None:
        """Remove a stored file if it exists."""
        if name:
            await AsyncPath(self.path(name)).unlink(missing_ok=True)
