"""The model server: Flask app (``serving.app.create_app``) under granian (``digits serve``).

Nothing here runs at import time; see :mod:`serving.app` for the routes and
:mod:`serving.model` for loading and hot-swapping the production model.
"""
