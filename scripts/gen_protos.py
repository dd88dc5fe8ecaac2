"""Generate Python stubs for protos/ into services/proto (or a given folder).

grpc_tools writes absolute imports (`from fraudscore.v1 import x_pb2`); they are rewritten to
`services.proto.fraudscore.v1` so the stubs live inside the installed package.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
_IMPORT = re.compile(r"^from fraudscore\.v1 import", re.MULTILINE)


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # protoc finds the mypy plugins on PATH; they sit beside this interpreter in a venv.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        fixed = _IMPORT.sub("from services.proto.fraudscore.v1 import", text)
        fixed = fixed.replace("import fraudscore.v1.", "import services.proto.fraudscore.v1.")
        fixed = fixed.replace(" fraudscore.v1.", " services.proto.fraudscore.v1.")
        if fixed != text:
            path.write_text(fixed)
    for pkg in (out / "fraudscore", out / "fraudscore" / "v1"):
        (pkg / "__init__.py").touch()
    (out / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "services" / "proto")
    generate(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
