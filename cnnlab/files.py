"""Small files written so that a crash never leaves half of one: atomic replace, JSON, YAML, text.

Every file cnnlab writes into a run folder goes through `atomic_write`: a temporary file in the same
folder, fsync, then os.replace onto the target. A reader sees the old complete file or the new one.
Failures a user can act on (disk full, read-only folder) become one CnnlabError naming the file.

No torch here: the CLI and the base modules import this.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml
from safetensors import SafetensorError

from cnnlab.errors import CnnlabError

TMP_PREFIX = ".tmp-"  # temporary files next to their target; stale ones are removed on start
# safetensors (0.8) itself writes through a Rust NamedTempFile, ".tmp" + 6 random characters, in the
# same folder and renames it onto our temporary; a kill at that moment leaves one of those behind.
_SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write via a temporary file in the same folder, fsync, then os.replace onto `path`.

    The target is either the old complete file or the new complete file, never a half-written one.
    If writing fails (disk full, read-only), the old file is kept and a CnnlabError says so.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    except OSError as error:
        raise CnnlabError(f"could not write {path}: {error.strerror or error}; check that {path.parent} "
                          "exists and is writable, or choose another --out folder") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with _suppress():
            os.unlink(tmp)
        # safetensors reports a failed write of its own (disk full, EFBIG) as a SafetensorError
        if isinstance(error, (OSError, SafetensorError)):
            kept = " (the previous version is kept)" if path.exists() else ""
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise CnnlabError(f"could not write {path}: {reason}{kept}; "
                              "free some disk space or choose another --out folder") from None
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # make the rename itself durable
    with _suppress():
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete temporary files left by an interrupted atomic_write; returns their names."""
    removed = []
    for entry in Path(folder).iterdir():
        if not (entry.name.startswith(TMP_PREFIX) or _SAFETENSORS_TMP.fullmatch(entry.name)):
            continue
        with _suppress():
            entry.unlink()
            removed.append(entry.name)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace a small text file."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write pretty JSON (NaN/inf kept as Python's json writes them)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike, data: dict) -> None:
    """Atomically write YAML (keys in insertion order)."""
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a missing or broken file into a CnnlabError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing; is {path.parent} a cnnlab run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CnnlabError(f"{path} is not valid JSON ({error})") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Read YAML (safe loader only), turning a missing or broken file into a CnnlabError naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CnnlabError(f"{path} is not valid YAML ({first})") from None
