"""Regenerate the Python gRPC modules from proto/reward.proto, reproducibly.

protoc derives the generated import lines from the .proto's path below its include root, so the
source is staged as `reward_service/proto/reward.proto` in a scratch root: the generated grpc
module then imports `from reward_service.proto import reward_pb2`, which works installed or not.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_SOURCE = PACKAGE_DIR.parents[1] / "proto" / "reward.proto"
GENERATED = ("reward_pb2.py", "reward_pb2.pyi", "reward_pb2_grpc.py")
_PACKAGE_PATH = Path("reward_service") / "proto"


def generate(out_dir: str | Path, source: str | Path = PROTO_SOURCE) -> list[Path]:
    """Compile `source` with grpc_tools' bundled protoc into `out_dir`; return the written files."""
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        staged = root / "src" / _PACKAGE_PATH / "reward.proto"
        staged.parent.mkdir(parents=True)
        shutil.copyfile(source, staged)
        build = root / "build"
        build.mkdir()
        args = ["grpc_tools.protoc", f"-I{root / 'src'}", f"--python_out={build}", f"--pyi_out={build}",
                f"--grpc_python_out={build}", str(_PACKAGE_PATH / "reward.proto")]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source}")
        written = []
        for name in GENERATED:
            shutil.copyfile(build / _PACKAGE_PATH / name, out_dir / name)
            written.append(out_dir / name)
    return written


def main() -> int:
    for path in generate(PACKAGE_DIR):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
