"""Whole-file writes that readers never see half done.

The text goes to a hidden temporary sibling (same directory, so the same
file system) and is renamed over the target: ``os.replace`` is atomic on
POSIX, so a reader (a serving sidecar reloading models, a report viewer)
sees the old file or the new one, never a torn one. The caller creates the
directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one rename.

    Raises:
        OSError: the directory is missing or not writable.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
