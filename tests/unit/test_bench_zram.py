"""benchmarks/common.zram_stats reads mm_stat as Python ints: the shared
targets.sh printed it through mawk's %d, which clamps at 2**31 - 1 (issue 14)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from common import zram_stats  # noqa: E402


def test_figures_above_2_gib_are_exact(tmp_path: Path) -> None:
    # orig compr used limit used_max same compacted huge huge_since
    (tmp_path / "mm_stat").write_text(
        "3225837568 1226714880 1326714880 0 1400000000 12 0 3 3\n")
    s = zram_stats(str(tmp_path))
    assert (s["orig_bytes"], s["compr_bytes"], s["mem_used_bytes"]) == \
        (3225837568, 1226714880, 1326714880)
    assert (s["same_pages"], s["huge_pages"]) == (12, 3)
    assert s["ratio_mem"] == round(3225837568 / 1326714880, 3)
