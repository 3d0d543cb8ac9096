"""Gradient path analysis: structural (timestamps, sources, path lengths) and measured."""

from .graph import LayerGraph, Position, trace_layers
from .paths import GradientPathReport, GroupPaths, analyze_model, gradient_paths

__all__ = [
    "GradientPathReport", "GroupPaths", "LayerGraph", "Position", "analyze_model", "gradient_paths",
    "trace_layers",
]
