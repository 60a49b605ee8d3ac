"""Benchmarks: timings and memory of the engine's hot paths (kept out of the tests).

Each benchmark is a module ``bench/bench_<name>.py`` with a function
``main(argv: list[str] | None = None) -> None`` that runs it and prints a small table; the runner
passes ``[]``, i.e. every option at its default. ``python -m bench`` runs them all,
``python -m bench NAME ...`` only the named ones (``python -m bench posemaps``), and
``python -m bench.bench_NAME --help`` shows a benchmark's own options.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

PREFIX = "bench_"


def available() -> list[str]:
    """Names of the benchmark modules in this folder, sorted."""
    return sorted(
        m.name[len(PREFIX):]
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith(PREFIX)
    )
