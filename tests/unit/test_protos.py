"""The committed stubs in semsearch/v1 are what scripts/gen-protos.sh generates now."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current(tmp_path):
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    generated = sorted(p.name for p in (tmp_path / "semsearch" / "v1").iterdir())
    committed = sorted(
        p.name for p in (ROOT / "semsearch" / "v1").iterdir() if p.name != "__init__.py" and p.is_file()
    )
    assert generated == committed, "stubs added or removed: run `make protos`"
    for name in generated:
        assert filecmp.cmp(
            tmp_path / "semsearch" / "v1" / name, ROOT / "semsearch" / "v1" / name, shallow=False
        ), f"semsearch/v1/{name} is stale: run `make protos`"


def test_stubs_import_by_package_path():
    from semsearch.v1 import common_pb2

    hit = common_pb2.Hit(id="a", score=0.5, metadata={"label": "x"})
    assert common_pb2.Hit.FromString(hit.SerializeToString()) == hit
