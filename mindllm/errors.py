"""User-facing errors: one clear line on stderr and exit status 2, never a traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file or package, unsupported device).

    The message must say what is wrong and how to fix it, in one line.
    """


def cli(main):
    """Wrap a command-line entry point so UserError becomes `error: ...` + exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: the last completed checkpoint is intact; continue with resume=true",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper
