"""The ``digits`` command: one entry point over the stages, the local runner, the registry
and the server.

It sits above the three layers it drives (``components/`` the stages,
``pipelines/`` the pipeline and its runners, ``serving/`` the server), so
that ``components/`` stays a leaf library that imports neither of the others.
"""
