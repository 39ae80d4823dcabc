"""User-facing errors: one clear line on stderr and exit status 2, never a traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file or package, unsupported device).

    The message must say what is wrong and how to fix it, in one line.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or another signal that stops a command), with the line to print: what was kept and how to continue.
    `status` is the exit status: 130 for Ctrl-C, 128 + the signal's number for others (SIGTERM: 143)."""

    def __init__(self, message: str = "interrupted", status: int = 130):
        super().__init__(message)
        self.status = status


def cli(main):
    """Wrap a command-line entry point so UserError becomes `error: ...` + exit 2, Ctrl-C one line + exit 130 (or
    an Interrupted's status)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as e:
            print(str(e) if isinstance(e, Interrupted) else "interrupted", file=sys.stderr)
            sys.exit(getattr(e, "status", 130))

    return wrapper
