"""Figures drawn by code: architectures (Figs. 2-6) and training curves."""
