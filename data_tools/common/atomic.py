"""Write a file whole or not at all, with any number of writers at once.

The data goes to a temporary file beside the target, named for this writer alone, and is
renamed over the target when complete: a reader sees the old file or the new one, never
half of one. A fixed temporary name (`NAME.tmp`) is not enough: the parts of an array
start together and write the same vocabulary and fingerprint, and one writer's rename
took the other's temporary file away (FileNotFoundError).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def temp_name(path: Path) -> Path:
    """A name beside `path` no other writer uses; ends in .tmp, so builds know it as theirs."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextmanager
def replacing(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """`with replacing(path) as f: f.write(...)`: `path` appears when the block ends
    without an error; on an error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_args) as f:  # x: never another's file
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
