"""User-facing errors: one clear line on stderr and exit status 2, never a traceback."""
import argparse
import contextlib
import functools
import importlib.util
import os
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


_MINDSPORE = os.path.dirname(importlib.util.find_spec("mindspore").origin) + os.sep


def _inside_mindspore(frame) -> bool:
    """True when the interrupted Python code runs under a MindSpore call (a compile calling back into Python,
    a graph's Python wrapper): an exception raised there passes through MindSpore's C++, which prints pages of
    analyze_fail.ir, writes that file into the working directory, or swallows it."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(_MINDSPORE):
            return True
        frame = frame.f_back
    return False


_pending: list[int] = []  # signals a ctrl_c block received inside a MindSpore call and has not raised yet


def interruption_point() -> None:
    """Raise the Ctrl-C (or SIGTERM) that arrived during a MindSpore call, if one did: loops call this once per
    step or token, so an interrupt stops them at the next one."""
    if _pending:
        raise KeyboardInterrupt(signal.Signals(_pending[0]).name)


@contextlib.contextmanager
def ctrl_c(message, retry: float = 0.05):
    """Ctrl-C (or SIGTERM) inside the block raises Interrupted(message()).

    The signal is raised in mindllm's own Python code only: one that lands inside a MindSpore call is sent again
    every `retry` seconds until it lands outside, or until the loop inside reaches its next `interruption_point()`.
    MindSpore's runtime answers SIGINT with a handler of its own that sends the process SIGTERM (it then ends as
    'Terminated', exit 143, nothing said): SIGTERM is caught here too."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    active, timers = [True], []

    def again(signum):
        if active[0]:
            os.kill(os.getpid(), signum)

    def stop(signum, frame):
        if not _inside_mindspore(frame):
            raise KeyboardInterrupt(signal.Signals(signum).name)
        _pending.append(signum)
        timers.append(threading.Timer(retry, again, (signum,)))
        timers[-1].daemon = True
        timers[-1].start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    _pending.clear()
    try:
        yield
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        raise Interrupted(message()) from None
    finally:
        active[0] = False
        _pending.clear()
        for t in timers:
            t.cancel()
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
