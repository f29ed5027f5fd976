"""The drawing page and the API's own description."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from serving.routes import server

#: The page's template and static files are the app's own (serving/templates, serving/static).
blueprint = Blueprint("page", __name__)


@blueprint.get("/")
def index() -> str:
    return render_template("index.html", model_name=server().model.name)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return Response(server().openapi(), mimetype="application/json")
