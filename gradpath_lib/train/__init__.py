"""Trainers: classification, detection and the extension procedures."""
