"""User-facing errors: one clear line on stderr and exit status 2, never a traceback."""
import argparse
import contextlib
import functools
import signal
import sys
import threading


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error: ...` line from cli() (not a usage block and a message)."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


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


@contextlib.contextmanager
def ctrl_c(message):
    """Ctrl-C (or SIGTERM) inside the block raises Interrupted(message()). MindSpore's runtime answers SIGINT with
    a handler of its own that sends the process SIGTERM (it then ends as 'Terminated', exit 143, nothing said):
    SIGTERM is caught here too."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        raise Interrupted(message()) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
