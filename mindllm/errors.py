"""User-facing errors: one clear line on stderr and exit status 2, never a traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file or package, unsupported device).

    The message must say what is wrong and how to fix it, in one line.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line to print: what was kept and how to continue."""


def cli(main):
    """Wrap a command-line entry point so UserError becomes `error: ...` + exit 2, Ctrl-C one line + exit 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as e:
            print(str(e) if isinstance(e, Interrupted) else "interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
