"""The Open Inference Protocol's gRPC service definition and its generated Python code.

``inference.proto`` is the source; ``inference_pb2.py``, ``inference_pb2.pyi`` and
``inference_pb2_grpc.py`` are generated from it by :func:`generate` (``make
grpc-stubs``, with grpcio-tools from the dev lock) and committed, as MLServer
commits its dataplane code: the serve image needs only ``grpcio`` and
``protobuf``, never the compiler.

The generated code names the protobuf release it was made for (``Protobuf Python
Version``); the protobuf runtime must be that release or newer, which is why
pyproject bounds grpcio-tools (its bundled protoc) and protobuf together.

Importing these modules does register ``inference.*`` in protobuf's default
descriptor pool, as ``tritonclient.grpc`` does with its own copy: the two cannot
be imported into one process. Our server imports ours; clients use theirs.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root: the proto's path below it is its name in the descriptor pool.
ROOT = Path(__file__).resolve().parents[2]
PROTO = "serving/oip/inference.proto"
#: The files :func:`generate` writes (below ``out``), all committed.
GENERATED = ("serving/oip/inference_pb2.py", "serving/oip/inference_pb2.pyi",
             "serving/oip/inference_pb2_grpc.py")


def generate(out: Path = ROOT) -> list[Path]:
    """Run grpcio-tools' protoc on :data:`PROTO`, writing :data:`GENERATED` below ``out``."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}",
                        f"--pyi_out={out}", f"--grpc_python_out={out}", str(ROOT / PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
    return [out / name for name in GENERATED]
