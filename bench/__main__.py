"""``python -m bench [NAME ...]``: run every benchmark, or only the named ones."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from bench import PREFIX, available


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(names)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
    for name in args.names or names:
        print(f"== bench {name} ==", flush=True)
        t0 = time.perf_counter()
        # An empty argv: each benchmark runs with its defaults, not with our command line.
        importlib.import_module(f"bench.{PREFIX}{name}").main([])
        print(f"== bench {name}: {time.perf_counter() - t0:.1f} s ==\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
