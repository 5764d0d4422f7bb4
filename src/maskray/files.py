"""Files and folders, safely: one atomic writer, one staged-output helper, one JSON reader.

- :func:`atomic_path` / :func:`atomic_write`: every file maskray writes is written under a hidden temporary
  name in the same folder and renamed into place (``os.replace`` is atomic on POSIX), so a reader never sees
  a half-written file. Temporary names carry the writer's process id: ``.NAME.tmp-PID-RANDOM``.
- :func:`staged_output`: a command's output folder appears complete or not at all. It is built in a hidden
  sibling ``.OUT.staging-PID-RANDOM`` and renamed into place at the end; staging folders and temporary files
  left by a dead process (kill -9, power loss) are found by the next run on the same output and removed.
- :func:`read_json`: every JSON file the tool reads goes through here; a missing, unreadable, invalid or
  wrongly-shaped file is a :class:`MaskrayError` naming the file and the problem, never an empty default.

This module sits at the bottom layer (beside errors, config and provenance): it imports nothing of maskray's
but the error type.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from maskray.errors import MaskrayError

_TMP_RE = re.compile(r"^\..+\.(?:tmp|staging)-(\d+)-[0-9a-f]{8}(?:\..*)?$")


def _tag() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so libraries pick the right format); on success
    it is renamed to ``path``, on any error removed. For writers that take a file name (Pillow, nibabel,
    pydicom)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    dot = name.find(".", 1)
    stem, suffixes = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    tmp = path.with_name(f".{stem}.tmp-{_tag()}{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------------------------- JSON
def read_json(path: str | os.PathLike, expect: type | tuple[type, ...] = dict, what: str = "file") -> Any:
    """Parse a JSON file; raises :class:`MaskrayError` naming the file when it is missing, unreadable, not
    JSON, or its top level is not ``expect`` (a dict by default). ``what`` names the file's role."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MaskrayError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise MaskrayError(f"{path}: is a folder, expected a JSON {what}") from None
    except UnicodeDecodeError:
        raise MaskrayError(f"{path}: not a text file (a JSON {what} is expected)") from None
    except OSError as e:
        raise MaskrayError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MaskrayError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise MaskrayError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        kind = {"dict": "an object", "list": "a list"}.get(names, names)
        raise MaskrayError(f"{path}: the {what} must hold {kind} at the top level, not {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------- folders
def checked_folder_arg(path: str | os.PathLike, option: str) -> Path:
    """``path`` made absolute with its symlinks resolved; a symlink loop or a dangling link is refused."""
    path = Path(path)
    try:
        resolved = path.resolve(strict=False)
        if path.is_symlink() and not path.exists():
            path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises RuntimeError for a symlink loop
        raise MaskrayError(f"{option} {path}: symbolic link loop") from None
    except OSError as e:
        raise MaskrayError(f"{option} {path}: {'symbolic link loop' if e.errno == 40 else 'dangling symbolic link'}") \
            from None
    return resolved


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Remove temporary files and staging folders in ``folder`` (whose name starts with ``.PREFIX``) left by
    processes that no longer run; returns what was removed. Those of a live process are left alone."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or not p.name.startswith(f".{prefix}") or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


def _report_stale(removed: list[Path]) -> None:
    for p in removed:
        print(f"maskray: removed {p}, left behind by an interrupted run", file=sys.stderr)


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, hint: str = "--overwrite",
                       resume: bool = False) -> Path:
    """Create an output folder to write into directly; refuse one that already holds files unless
    ``overwrite`` (empties it) or ``resume`` (keeps it). Stale temporary files of dead runs are removed."""
    path = checked_folder_arg(path, "output folder")
    if path.exists() and not path.is_dir():
        raise MaskrayError(f"{path}: exists and is not a folder")
    _report_stale(remove_stale(path.parent, path.name + "."))
    if path.is_dir():
        remove_stale(path)
        if any(path.iterdir()) and not resume:
            if not overwrite:
                raise MaskrayError(f"{path}: folder already holds files; choose another or pass {hint}")
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_folder(out: str | os.PathLike, overwrite: bool = False, resume: bool = False,
                        hint: str = "--overwrite") -> Path:
    """``out`` resolved, or a one-line error when it is a file, or a folder holding files without ``overwrite``
    or ``resume``. Commands that work long before writing call it first; :func:`staged_output` calls it too."""
    out = checked_folder_arg(out, "output folder")
    if out.exists() and not out.is_dir():
        raise MaskrayError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise MaskrayError(f"{out}: folder already holds files; choose another or pass {hint}")
    return out


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool = False, resume: bool = False,
                  hint: str = "--overwrite") -> Iterator[Path]:
    """An output folder that appears complete or not at all.

    Refuses a non-empty ``out`` before any work unless ``overwrite`` or ``resume``. Removes what dead runs
    left beside or inside ``out``. With ``resume`` and an existing ``out``, yields ``out`` itself (work
    continues in place; every file should then be written with :func:`atomic_path`). Otherwise yields a new
    hidden sibling folder, renamed to ``out`` when the block ends without error and removed when it raises
    (Ctrl-C included). A kill -9 leaves the sibling, which the next run on ``out`` removes.
    """
    out = check_output_folder(out, overwrite, resume, hint)
    _report_stale(remove_stale(out.parent, out.name + "."))
    if out.is_dir() and any(out.iterdir()) and resume:
        remove_stale(out)
        yield out
        return
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.staging-{_tag()}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.tmp-{_tag()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in made:  # folders made for the output, innermost first: a failed run leaves none behind
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
