"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), beside HTTP.

What Triton, KServe and MLServer offer on their gRPC port: ``ServerLive``,
``ServerReady``, ``ModelReady``, ``ServerMetadata``, ``ModelMetadata`` and
``ModelInfer`` (typed ``contents`` or ``raw_input_contents`` in;
``raw_output_contents`` out, or typed contents when the request sets
``binary_data_output`` false), on ``DIGITS_GRPC_PORT`` (8081).

One gRPC server per granian worker process, started by the worker
(:meth:`serving.front.Front.__rsgi_init__`), every worker listening on the same
port with ``SO_REUSEPORT`` (the kernel spreads connections over them). Why in the
worker rather than one server in ``digits serve``'s main process:

* it answers from the worker's :class:`serving.app.Server` — the very
  :class:`serving.model.DigitsModel` the HTTP app uses — so a new production
  version reaches HTTP and gRPC in the same atomic swap, with no second copy of
  the weights, no second poller and no hop between processes;
* requests share the worker's work slots (``DIGITS_CONCURRENCY``, shed after
  ``DIGITS_MAX_WAIT_MS`` with ``UNAVAILABLE``), forward passes, metrics and
  access log with HTTP, so the worker's limits hold whatever the transport;
* gRPC's C core must not be started before a ``fork``: granian forks the
  workers, so this module (and ``grpc``) is imported only inside one.

A gRPC client keeps one HTTP/2 connection, so one channel talks to one worker;
clients that want both workers open two channels (as a load balancer does).

Requests are checked by :mod:`serving.protocol`, as HTTP's are: the gRPC
request is turned into the v2 JSON form (raw contents as its binary tensor
bytes) and refused with the same message. Status codes: ``INVALID_ARGUMENT``
(HTTP 400/415), ``NOT_FOUND`` (unknown model or version, 404),
``RESOURCE_EXHAUSTED`` (over a batch limit, 413; a message over
``DIGITS_MAX_BODY_BYTES`` is refused by gRPC itself with the same code),
``UNAVAILABLE`` (no model loaded yet, or shed under overload, 503) and
``INTERNAL`` for a bug (logged, never a crash).

These stubs and ``tritonclient.grpc`` cannot live in one process (both register
``inference.*`` in protobuf's default pool): clients use theirs, the server ours.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from serving import protocol
from serving.hooks import Overloaded
from serving.model import ModelNotReady
from serving.oip import inference_pb2 as pb
from serving.oip import inference_pb2_grpc as pb_grpc
from serving.protocol import ApiError

if TYPE_CHECKING:
    from serving.app import Server

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: On shutdown, RPCs in flight get this long to finish.
STOP_GRACE_S = 5.0
#: The gRPC code of each HTTP status the shared validation refuses with.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
#: The field of ``InferTensorContents`` that holds each datatype's values.
CONTENTS_FIELD = {
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents",
}
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))
#: Each numeric field's own width: values are read at it, so an out-of-range one (300 as
#: UINT8) reaches the range check instead of wrapping.
_FIELD_TYPES = {"uint_contents": np.uint32, "uint64_contents": np.uint64,
                "int_contents": np.int32, "int64_contents": np.int64,
                "fp32_contents": np.float32, "fp64_contents": np.float64}


# --------------------------------------------------------------------------- messages


def parameters(entries: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as the plain dict the v2 JSON form has."""
    out = {}
    for key, value in entries.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def _contents(tensor: Any) -> np.ndarray:
    """A tensor's typed contents as an array, from the field its datatype uses."""
    datatype = tensor.datatype
    filled = [name for name in _ALL_FIELDS if len(getattr(tensor.contents, name))]
    if datatype == "FP16" and filled:
        raise ApiError(400, "FP16 values travel only as raw_input_contents")
    field = CONTENTS_FIELD.get(datatype)
    stray = [name for name in filled if name != field]
    if field is not None and stray:
        raise ApiError(400, f"{datatype} values go in contents.{field}, got "
                            f"{', '.join('contents.' + name for name in stray)}")
    if field is None or field in ("bool_contents", "bytes_contents"):
        return np.empty(0, dtype=np.uint8)  # the datatype check refuses it by name
    return np.asarray(getattr(tensor.contents, field), dtype=_FIELD_TYPES[field])


def infer_request(request: Any, *, max_batch: int) -> protocol.InferRequest:
    """A ``ModelInferRequest`` → the checked images and outputs, through the very checks
    (and messages) of the v2 JSON and binary forms (:func:`serving.protocol.v2_request`)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, f"raw_input_contents has {len(raw)} entries for "
                            f"{len(request.inputs)} inputs; give one per input or none")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise ApiError(400, f"inputs[{index}] carries contents although "
                                    "raw_input_contents is given; use one or the other")
            item["parameters"] = {"binary_data_size": len(raw[index])}
        else:
            item["data"] = _contents(tensor)
        inputs.append(item)
    body: dict[str, Any] = {
        "inputs": inputs,
        # gRPC answers in raw_output_contents unless the client asks otherwise.
        "parameters": {"binary_data_output": True, **parameters(request.parameters)},
    }
    if request.id:
        body["id"] = request.id
    if len(request.outputs):
        body["outputs"] = [{"name": output.name, "parameters": parameters(output.parameters)}
                           for output in request.outputs]
    parsed = protocol.v2_request(body, max_batch=max_batch, binary=b"".join(raw))
    if len({output.binary for output in parsed.outputs}) > 1:
        raise ApiError(400, "outputs must all be raw (binary_data true) or all typed "
                            "contents: raw_output_contents holds every output or none")
    return parsed


def infer_response(*, model_name: str, version: str, probabilities: np.ndarray,
                   parsed: protocol.InferRequest) -> Any:
    """The ``ModelInferResponse``: the v2 answer (:func:`serving.protocol.v2_response`)
    with its binary outputs as ``raw_output_contents``, or its JSON ones as contents."""
    answer, raw = protocol.v2_response(model_name=model_name, version=version,
                                       probabilities=probabilities, outputs=parsed.outputs,
                                       request_id=parsed.request_id)
    response = pb.ModelInferResponse(model_name=model_name, model_version=version,
                                     id=parsed.request_id or "")
    offset = 0
    for tensor in answer["outputs"]:
        output = response.outputs.add(name=tensor["name"], datatype=tensor["datatype"],
                                      shape=tensor["shape"])
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is not None:
            response.raw_output_contents.append(raw[offset:offset + size])
            offset += size
        else:
            getattr(output.contents, CONTENTS_FIELD[tensor["datatype"]]).extend(tensor["data"])
    return response


def _peer_address(peer: str) -> str | None:
    """``ipv4:1.2.3.4:5678`` / ``ipv6:[::1]:5678`` → the address, as HTTP logs it."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer or None
    return rest.rpartition(":")[0].strip("[]")


# --------------------------------------------------------------------------- the service


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs, answered from one worker's :class:`serving.app.Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def _run(self, method: str, context: grpc.ServicerContext,
             work: Callable[[dict[str, Any]], Any], *, admit: bool = False,
             bytes_in: int | None = None, request_id: str | None = None) -> Any:
        """Run ``work`` (which may fill in ``note["version"]``/``["batch"]``), map any
        refusal to a gRPC status, and account for the call as HTTP does for a request."""
        arrived, started = time.monotonic(), time.perf_counter()
        note: dict[str, Any] = {}
        admitted = False
        status, code, message = 200, grpc.StatusCode.OK, ""
        try:
            if admit:
                self.server.admission.enter(arrived)
                admitted = True
            return work(note)
        except ApiError as error:
            status, message = error.status, error.message
            code = CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
        except ModelNotReady as error:
            status, code, message = 503, grpc.StatusCode.UNAVAILABLE, str(error)
        except Overloaded as error:
            self.server.metrics.shed.inc()
            status, code, message = 503, grpc.StatusCode.UNAVAILABLE, str(error)
        except Exception:
            log.exception("unhandled error in gRPC %s", method)
            status, code, message = 500, grpc.StatusCode.INTERNAL, "internal server error"
        finally:
            if admitted:
                self.server.admission.leave()
            path = f"/{SERVICE}/{method}"
            self.server.account(route=path, method="GRPC", path=path, status=status,
                                started=started, version=note.get("version"),
                                batch=note.get("batch"), remote=_peer_address(context.peer()),
                                bytes_in=bytes_in, request_id=request_id)
        context.abort(code, message)  # raises: gRPC answers with the status

    # ------------------------------------------------------------------ health, metadata

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("ServerLive", context, lambda _: pb.ServerLiveResponse(live=True))

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("ServerReady", context,
                         lambda _: pb.ServerReadyResponse(ready=self.server.model.ready))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work(_: dict[str, Any]) -> Any:
            self.server.check_name(request.name)
            loaded = self.server.model.current
            return pb.ModelReadyResponse(ready=loaded is not None
                                         and request.version in ("", loaded.version))

        return self._run("ModelReady", context, work)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        from serving.app import SERVER_NAME, package_version

        # binary_tensor_data is HTTP's extension; raw contents are gRPC's own.
        return self._run("ServerMetadata", context, lambda _: pb.ServerMetadataResponse(
            name=SERVER_NAME, version=package_version(), extensions=[]))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work(_: dict[str, Any]) -> Any:
            server = self.server
            server.check_name(request.name)
            loaded = (server.model.current if not request.version
                      else server.resolve(request.name, request.version))
            meta = server.metadata(loaded)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]],
                outputs=[tensor(**t) for t in meta["outputs"]])

        return self._run("ModelMetadata", context, work)

    # ------------------------------------------------------------------ inference

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        server = self.server

        def work(note: dict[str, Any]) -> Any:
            loaded = server.resolve(request.model_name, request.model_version or None)
            parsed = infer_request(request, max_batch=server.settings.max_batch)
            note["batch"] = len(parsed.images)
            prediction = server.infer(parsed.images, loaded)
            note["version"] = prediction.version
            return infer_response(model_name=request.model_name, version=prediction.version,
                                  probabilities=prediction.probabilities, parsed=parsed)

        return self._run("ModelInfer", context, work, admit=True,
                         bytes_in=request.ByteSize(), request_id=request.id or None)


# --------------------------------------------------------------------------- the server


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start(server: Server, host: str | None = None) -> grpc.Server | None:
    """Start this worker's gRPC server on ``DIGITS_GRPC_PORT`` (``None`` when it is 0).

    The port is shared with the other workers (``SO_REUSEPORT``); messages over
    ``DIGITS_MAX_BODY_BYTES`` are refused by gRPC with ``RESOURCE_EXHAUSTED``.
    """
    from serving.cli import DEFAULT_HOST, GRPC_HOST_ENV

    settings = server.settings
    if not settings.grpc_port:
        return None
    host = host or os.environ.get(GRPC_HOST_ENV) or DEFAULT_HOST
    grpc_server = grpc.server(
        ThreadPoolExecutor(settings.threads, thread_name_prefix="digits-grpc"),
        options=[("grpc.so_reuseport", 1),
                 ("grpc.max_receive_message_length", settings.max_body_bytes)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(server), grpc_server)
    bound = grpc_server.add_insecure_port(address(host, settings.grpc_port))
    if bound != settings.grpc_port:
        raise RuntimeError(f"gRPC could not bind {address(host, settings.grpc_port)}")
    grpc_server.start()
    log.info("gRPC (%s) on %s", SERVICE, address(host, settings.grpc_port),
             extra={"event": "grpc_started", "port": settings.grpc_port})
    return grpc_server


def stop(grpc_server: grpc.Server | None) -> None:
    """Stop taking RPCs; those in flight get :data:`STOP_GRACE_S` to finish."""
    if grpc_server is not None:
        grpc_server.stop(STOP_GRACE_S).wait(STOP_GRACE_S + 1)
