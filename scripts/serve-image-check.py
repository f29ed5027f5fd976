"""Build-time check of the serving image (Dockerfile.serve): the runtime is complete.

Everything serving and the Kaggle job import must import, every family's features
must compute on what the pruned environment holds, and no training framework may be
there: models reach this image as their inference forms (components.export).
"""

import importlib.util
import sys

import numpy as np

for absent in ("tensorflow", "keras", "xgboost", "treelite", "scipy", "sklearn", "kfp",
               "matplotlib", "seaborn", "docker", "pip"):
    if importlib.util.find_spec(absent) is not None:
        sys.exit(f"serve image: {absent} is installed, and must not be")

import granian  # noqa: E402,F401
import onnxruntime  # noqa: E402
import PIL.Image  # noqa: E402,F401
import uvloop  # noqa: E402,F401

import components.export  # noqa: E402
import components.kaggle.cli  # noqa: E402
import components.kaggle.job  # noqa: E402,F401
import serving.app  # noqa: E402,F401
from components.features import feature_rows  # noqa: E402
from components.models import MODEL_KINDS  # noqa: E402

digits = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
for name in {model.defaults.get("features", "raw") for model in MODEL_KINDS.values()}:
    rows = feature_rows(name)(digits)
    assert rows.shape[0] == 2 and np.isfinite(rows).all(), name
print(f"serve image: runtime complete (onnxruntime {onnxruntime.__version__}), "
      "no training framework")
