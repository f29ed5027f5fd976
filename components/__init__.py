"""Digit-classifier pipeline stages and the code they share.

Each stage module (``ingest``, ``train``, ``evaluate``, ``gate``, ``deploy``) has a
pure core, a ``main(argv)`` CLI and a KFP component in :mod:`components.ops`.
Shared pieces: :mod:`components.settings`, :mod:`components.data`,
:mod:`components.stem` (preprocessing used by training *and* serving),
:mod:`components.models`, :mod:`components.registry`.
"""

__version__ = "0.1.0"
