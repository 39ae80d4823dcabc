"""What every exercise check shares: run the student's function on fresh inputs, compare with the reference, and say
precisely what is wrong (which entry, expected vs got, a hint), never just False.

A check is a function decorated with @exercise("week01.name", hint=...); it calls the student's function on cases
and raises Mismatch at the first disagreement (`expect_close`, `expect_equal` do the comparing). The decorator prints
one line (passed, or what is wrong), records the result for `python -m mindllm.grade`, and returns None, so a notebook
keeps running top to bottom whatever the student wrote.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import traceback

import numpy as np

GRADE_LOG = "MINDLLM_GRADE_LOG"  # set by python -m mindllm.grade: each result is appended there as one JSON line
results: list = []  # every result of this process, in order


class Mismatch(Exception):
    """The student's answer differs from the reference; the message says where and how."""


@dataclasses.dataclass
class Result:
    name: str
    passed: bool
    message: str

    def show(self) -> None:
        mark = "✔" if self.passed else "✘"
        print(f"{mark} {self.name}: {self.message}")

    def record(self) -> None:
        results.append(self)
        path = os.environ.get(GRADE_LOG)
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(dataclasses.asdict(self), ensure_ascii=False) + "\n")


def _where_it_broke(e: BaseException) -> str:
    """The line of the student's code that raised (the last frame outside mindllm)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "mindllm" not in f.filename.replace("\\", "/")]
    return f" (line: {frames[-1].line})" if frames and frames[-1].line else ""


def exercise(name: str, hint: str = ""):
    """Turn `check(student, ...) -> number of cases` into a check that reports instead of raising."""

    def wrap(check):
        @functools.wraps(check)
        def run(student, *args, **kwargs) -> None:
            try:
                n = check(student, *args, **kwargs)
                result = Result(name, True, f"passed ({n} cases)")
            except NotImplementedError:
                result = Result(name, False, "not done yet: replace `raise NotImplementedError` with your code")
            except Mismatch as e:
                result = Result(name, False, f"{e}" + (f" — hint: {hint}" if hint else ""))
            except Exception as e:  # the student's code crashed: say how, and where
                result = Result(name, False, f"your function raised {type(e).__name__}: {str(e)[:200]}"
                                             f"{_where_it_broke(e)}")
            result.show()
            result.record()

        run.exercise = name
        return run

    return wrap


def expect_close(got, want, what: str, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Arrays equal to rounding: shape first, then the first entry that differs."""
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Mismatch(f"{what}: got {type(got).__name__} {str(got)[:60]}, expected numbers") from None
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {got.shape}, expected {want.shape}")
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=False)
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        at = f" entry {list(i)}" if i else ""
        raise Mismatch(f"{what}:{at} is {got[i]:.6g}, expected {want[i]:.6g} ({int(bad.sum())} of {bad.size} "
                       f"entries differ)")


def expect_equal(got, want, what: str) -> None:
    """Exact equality (token ids, counts, strings, lists)."""
    if isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            raise Mismatch(f"{what}: shape {got.shape}, expected {want.shape}")
        bad = got != want
        if bad.any():
            i = tuple(int(k) for k in np.argwhere(bad)[0])
            raise Mismatch(f"{what}: entry {list(i)} is {got[i]!r}, expected {want[i]!r}")
    elif got != want:
        raise Mismatch(f"{what}: got {str(got)[:80]!r}, expected {str(want)[:80]!r}")
