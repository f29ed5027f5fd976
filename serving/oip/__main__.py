"""``python -m serving.oip [OUT]`` (``make grpc-stubs``): regenerate the committed gRPC stubs.

``OUT`` (default: the repository) is where they are written; the stub test
writes them to a temporary folder, in a process of its own (protoc loads
descriptors into protobuf's process-wide pool).
"""

from __future__ import annotations

import sys
from pathlib import Path

from serving.oip import ROOT, generate

if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(f"wrote {path}", file=sys.stderr)
