"""Kaggle ``digit-recognizer``: predict ``test.csv`` with a model, submit the result.

The serving image runs this as a Kubernetes Job (``digits kaggle run ...``), so
the model is by default the registry's *production* version — the one users
are being served — and the score Kaggle returns measures exactly that model.

Like the pipeline stages, in layers:

* :mod:`components.kaggle.submission`: the file (test.csv → ``ImageId,Label``,
  written atomically; what Kaggle accepts; its score against known labels);
* :mod:`components.kaggle.client`: the only code that talks to Kaggle, through
  the official ``kaggle`` client (imported lazily: importing it authenticates);
* :mod:`components.kaggle.job`: the typed core, :func:`~components.kaggle.job.run_kaggle`
  (which model, offline or online, archived in the registry), and the KFP step's;
* :mod:`components.kaggle.cli`: ``digits kaggle``, parsing and handing over.
"""
