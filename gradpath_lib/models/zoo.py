"""Importing this module registers every built-in network family (one import per family module)."""

from . import residual_nets  # noqa: F401
from . import dense_nets  # noqa: F401
from . import vovnets  # noqa: F401
from . import dsfb  # noqa: F401
from . import yolor  # noqa: F401
from . import aux_heads  # noqa: F401
