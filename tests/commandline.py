"""``btdm`` commands run in the test's own process, through the function the ``btdm`` command runs.

The ``btdm`` entry point is ``btdm_engine.cli.main``: it parses the arguments, runs the command and
turns the project's errors into one line on stderr and exit status 2. :func:`run_btdm` calls that same
function with stdout and stderr captured, so a test of a command's refusals, messages and files costs
the command's own work instead of a new interpreter that imports torch again (1.5-2 s each; the suite
runs over a hundred such commands). What needs a process of its own stays one in the tests: the
installed ``btdm`` script (``test_cli.py``), signals and killed processes, servers, Blender.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_btdm(*args: object, cwd: Path = ROOT, check: bool = False) -> subprocess.CompletedProcess:
    """``btdm ARGS`` from ``cwd``, as a CompletedProcess: its exit status, stdout and stderr.

    The command runs with one torch thread, as the suite's subprocesses and servers do (``OMP_NUM_THREADS=1``),
    so frames compared with a server's are computed alike. argparse's refusals (status 2) and ``--help``
    (status 0) end in SystemExit, as they end the process; a bug's exception propagates into the test
    (the process would print a traceback). ``check``: a non-zero status fails the test, showing stderr.
    What a command sets for its process is put back afterwards: the ``--limit`` overrides and torch's
    thread count.
    """
    import torch

    from btdm_engine import cli, limits

    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    torch.set_num_threads(1)
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        limits.override(None)
        torch.set_num_threads(threads)
    if check:
        assert code == 0, f"btdm {' '.join(argv)}: exit status {code}\n{err.getvalue()}"
    return subprocess.CompletedProcess(["btdm", *argv], code, out.getvalue(), err.getvalue())
