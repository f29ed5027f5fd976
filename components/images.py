"""The container images, named once.

The KFP components run in ``TRAIN_IMAGE``; the serving Deployment and the
Kaggle job run ``SERVE_IMAGE``. Both are built from this repository
(``Dockerfile.train``, ``Dockerfile.serve``); a cluster points them at its own
registry with kustomize's ``images:`` (manifests) or by editing these two
lines before ``make pipeline`` recompiles the pipeline.
"""

TRAIN_IMAGE = "digits-train:0.1.0"
SERVE_IMAGE = "digits-serve:0.1.0"
