"""The one exception type that the CLI turns into a one-line message and exit code 2, and the one-line wording of the
faults that come from outside (the filesystem, an interrupt) at the CLI boundary."""

from __future__ import annotations

import errno

RESUME_HINT = "rerun the same command to resume"
INTERRUPTED = f"interrupted; {RESUME_HINT}"


class AnnaError(Exception):
    """A user-facing error: bad input, a missing file, an infeasible request. Never a bug."""


_ADVICE = {
    errno.ENOSPC: f"the disk is full: free some space, then {RESUME_HINT}",
    errno.EDQUOT: f"the disk quota is exhausted: free some space, then {RESUME_HINT}",
    errno.EROFS: "the file system is read-only: give a writable folder",
    errno.EACCES: "permission denied: give a folder you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: give a folder you can write, or fix its permissions",
    errno.ELOOP: "a symbolic link loop: point it at a real folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long: give a shorter path",
    errno.EIO: "an input/output error: check the disk",
}


def describe_os_error(e: OSError) -> str:
    """One line for a filesystem fault: the path, what went wrong and what to do."""
    path = e.filename if e.filename is not None else None
    advice = _ADVICE.get(e.errno or -1) or (e.strerror or str(e) or type(e).__name__)
    where = f"{path}: " if path is not None else ""
    if e.filename2 is not None:
        where = f"{path} -> {e.filename2}: "
    return f"{where}{advice}".replace("\n", " ")
