"""The container images, named once.

Every KFP component runs in ``TRAIN_IMAGE`` (a lightweight component needs kfp
in its image); the serving Deployment and the Kaggle Job (``digits kaggle``) run
``SERVE_IMAGE``, which holds the runtime alone. Both are built from this repository
(``Dockerfile.train``, ``Dockerfile.serve``); a cluster points them at its own
registry with kustomize's ``images:`` (manifests) or by editing these two
lines before ``make pipeline`` recompiles the pipeline.
"""

TRAIN_IMAGE = "digits-train:0.1.0"
SERVE_IMAGE = "digits-serve:0.1.0"
