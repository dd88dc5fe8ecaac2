"""The checked-in stubs are exactly what `make protos` generates from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    checked_in = ROOT / "services" / "proto"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    stale = sorted(p.relative_to(checked_in) for p in checked_in.rglob("*.py*"))
    assert fresh == stale, "stub files differ: run `make protos`"
    for rel in fresh:
        assert filecmp.cmp(tmp_path / rel, checked_in / rel, shallow=False), (
            f"{rel} is stale: run `make protos`"
        )
