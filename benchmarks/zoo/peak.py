"""``python -m benchmarks.zoo.peak FILE -- CMD ...``: run CMD, write its peak RSS (KiB) to FILE, exit as it did.

Why a launcher: a child's ``ru_maxrss`` keeps the high-water mark of the process it was forked
from until ``exec`` (Linux folds the old address space's peak in), so a stage forked from the
driver, whose own memory grows with every graph it reads, inherited that as its "peak". Forked from
this small process instead, the stage's figure is its own. Imports nothing heavy on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit("usage: python -m benchmarks.zoo.peak FILE -- CMD ...")
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here
    with open(out, "w") as f:
        f.write(f"{usage.ru_maxrss}\n")
    raise SystemExit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)


if __name__ == "__main__":
    main()
