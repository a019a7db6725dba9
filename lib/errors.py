"""The errors a user can cause or meet (a bad input, a damaged file, a full disk), and the one way
command lines report them: one line naming the input at fault and what would be valid, exit
non-zero, no traceback.

>>> describe_os_error(OSError(28, "No space left on device", "/data/s/c/0"))
'disk full while writing /data/s/c/0; free some space and rerun the same command'
"""
from __future__ import annotations

import errno

__all__ = ["UserError", "describe_os_error", "run_command"]


class UserError(Exception):
    """An error whose message is complete for a user: it names the input and what would be valid.

    Command lines print its message alone; subclasses also derive from the built-in error a caller
    would expect (``ValueError`` for bad values, ``RuntimeError`` for a state on disk).
    """


def describe_os_error(err: OSError) -> str:
    """One line for an ordinary fault of the machine (disk full, read-only, no permission, missing file)."""
    where = err.filename or "a file"
    if err.errno == errno.ENOSPC:
        return f"disk full while writing {where}; free some space and rerun the same command"
    if err.errno == errno.EROFS:
        return f"{where} is on a read-only file system; choose a writable place"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {where}; choose a place you can write to"
    if err.errno == errno.ENOENT:
        return f"{where} does not exist"
    return f"{err.strerror or type(err).__name__} ({where})"


def run_command(main, *, interrupted: str = "interrupted; rerun the same command to continue") -> int:
    """Run ``main()`` (a command line's body, returning its exit code) with the one error path for users:
    a UserError, a bad value (ValueError) or an ordinary fault of the machine (OSError) prints one line
    ``error: ...`` and returns 2 (bad input) or 1 (fault); Ctrl-C prints ``interrupted`` and returns 130.
    ``EMOTION_DEBUG=1`` re-raises instead, for the traceback."""
    import os
    import sys

    debug = os.environ.get("EMOTION_DEBUG") == "1"
    try:
        return main()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except (UserError, ValueError, KeyError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if debug:
            raise
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
