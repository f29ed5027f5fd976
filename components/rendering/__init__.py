"""The report renderer: plots, a side-by-side comparison and one offline HTML file.

Input is plain data: one :class:`ModelEvaluation` per model (labels,
probabilities, the holdout digits, training history, the metrics dictionary
from :func:`components.metrics.compute_metrics`, and free-form info such as
version, kind and params) plus, optionally, the gate's decision dictionary.
Output is a single ``report.html`` whose images are embedded as base64 PNG —
no CSS, JavaScript, fonts or images are fetched from anywhere, so it opens the
same from a KFP artifact, an S3 download or an air-gapped laptop — and a
``metrics.json`` with the same numbers for machines.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg
canvas and never registered with ``pyplot``: nothing global is switched,
nothing leaks between reports, and importing this module draws nothing.
"""

from components.rendering.figures import figure_to_data_uri
from components.rendering.page import render_report, summary_table, write_report

__all__ = ["figure_to_data_uri", "render_report", "summary_table", "write_report"]
