"""``/predict``: pictures of digits (uploads) or raw pixels, for people and simple clients."""

from __future__ import annotations

from flask import Blueprint, Response, request

from serving import protocol
from serving.imaging import IMAGE_TYPES, ImageError, TooMuchWork, uploads_to_mnist
from serving.protocol import ApiError
from serving.routes import json_object, json_response, server

blueprint = Blueprint("images", __name__)


@blueprint.post("/predict")
def predict() -> Response:
    """PNG/JPEG uploads (multipart: several are a batch; or one raw ``image/*`` body), or
    ``{"pixels": ...}``. Rate-limited per client (``DIGITS_PREDICT_RATE_LIMIT``)."""
    srv = server()
    settings = srv.settings
    loaded = srv.resolve(srv.model.name)
    mimetype = request.mimetype
    sources: list[str] | None = None
    if mimetype == "multipart/form-data":
        uploads = list(request.files.items(multi=True))
        if not uploads:
            raise ApiError(400, "no file in the form: upload images as file fields")
        if len(uploads) > settings.max_upload_images:
            raise ApiError(413, f"{len(uploads)} images exceed the limit of "
                                f"{settings.max_upload_images} per upload "
                                "(DIGITS_MAX_UPLOAD_IMAGES)")
        sources = [upload.filename or key for key, upload in uploads]
        images = decode_uploads([upload.read() for _, upload in uploads], sources)
    elif mimetype in IMAGE_TYPES:
        images = decode_uploads([request.get_data(cache=False)], ["body"])
    elif mimetype == "application/json":
        body = json_object()
        if "pixels" not in body:
            raise ApiError(400, "JSON requests need 'pixels': one image (784 values or "
                                "28x28) or a batch of them, 0..255")
        images = protocol.pixels_from(body["pixels"], "'pixels'", max_batch=settings.max_batch)
    else:
        raise ApiError(415, "send images as multipart/form-data, image/png or image/jpeg, "
                            f"or pixels as application/json (got "
                            f"{request.content_type or 'no Content-Type'!r})")
    prediction = srv.predict(images, loaded)
    rows = protocol.predictions(prediction.probabilities)
    if sources is not None:
        for row, source in zip(rows, sources, strict=True):
            row["source"] = source
    return json_response({"model_name": srv.model.name, "model_version": prediction.version,
                          "model_kind": prediction.kind, "predictions": rows})


def decode_uploads(blobs: list[bytes], sources: list[str]):
    """Uploads → canonical images, within the request's pixel and time budget."""
    settings = server().settings
    try:
        return uploads_to_mnist(blobs, sources, max_pixels=settings.max_image_pixels,
                                max_total_pixels=settings.max_request_pixels,
                                timeout_s=settings.decode_timeout_s)
    except TooMuchWork as error:
        raise ApiError(413, str(error)) from error
    except ImageError as error:
        raise ApiError(400, str(error)) from error
