"""gradpath: gradient path analysis and the networks of PRN, CSPNet and ELAN."""

__version__ = "0.1.0"

# Bump when a change alters the numbers a run produces (models, data, recipes):
# it is part of every run's id, so old records are never mixed with new ones.
NUMERICS_VERSION = 2  # 2: detector heads predict in float32 under autocast (new module names)
