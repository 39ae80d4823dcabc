"""Exercise checks for the course notebooks: `check.weekNN.<exercise>(your_function)` tests your function against
the reference implementation on fresh random inputs and prints what is right or wrong.

    from mindllm.exercises import check
    check.week01.output_gradient(my_output_gradient)

One module per week (week01.py, ...); `python -m mindllm.grade` runs a notebook's checks and scores them.
"""
import importlib

from .core import Mismatch, Result, exercise, expect_close, expect_equal, results  # noqa: F401


class _Weeks:
    """`check.week01` is the module mindllm.exercises.week01, imported when first used."""

    def __getattr__(self, week: str):
        if not week.startswith("week"):
            raise AttributeError(week)
        try:
            return importlib.import_module(f"{__name__}.{week}")
        except ModuleNotFoundError:
            raise AttributeError(f"no exercises for {week}") from None


check = _Weeks()
