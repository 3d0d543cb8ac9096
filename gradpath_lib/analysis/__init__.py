"""Gradient path analysis: structural (timestamps, sources, path lengths) and measured.

Definitions are in `gradpath_lib.analysis.paths`; tracing rules in `gradpath_lib.analysis.graph`
(the graph it builds: `layer_graph`; checked against autograd: `autograd_check`);
the measured spectrum's method in `gradpath_lib.analysis.measured`.
"""

from .graph import trace_layers
from .layer_graph import LayerGraph, Position
from .measured import gradients_by_timestamp, measured_gradient_spectrum
from .paths import GradientPathReport, GroupPaths, analyze_model, gradient_paths
from .summary import Table1, rank_correlations, structural_table, table1

__all__ = [
    "GradientPathReport", "GroupPaths", "LayerGraph", "Position", "Table1", "analyze_model", "gradient_paths",
    "gradients_by_timestamp", "measured_gradient_spectrum", "rank_correlations", "structural_table", "table1",
    "trace_layers",
]
