"""``batchscore`` with the per-chunk histograms switched off (issue 21's bench only).

The command exactly as installed, except that :meth:`batchscore.histograms.Distribution.observe`
returns nothing, so the scoring threads count no histogram and the writer adds none: what a
run costs without them, for ``bench/drift_cost.py`` to compare in the same session.  Not a
product switch: every real run keeps its histograms.

    .venv/bin/python bench/no_histograms.py score IDS -c CONFIG -o OUT ...
"""

from __future__ import annotations

import sys
from typing import Any

from batchscore import histograms
from batchscore.app import run_cli


def _nothing(cls: type[histograms.Distribution], *args: Any) -> None:
    return None


if __name__ == "__main__":
    histograms.Distribution.observe = classmethod(_nothing)  # type: ignore[assignment,method-assign]
    sys.exit(run_cli(sys.argv[1:]))
