"""``python -m serving.oip`` (``make grpc-stubs``): regenerate the committed gRPC stubs."""

from __future__ import annotations

import sys

from serving.oip import generate

if __name__ == "__main__":
    for path in generate():
        print(f"wrote {path}", file=sys.stderr)
