"""Importing this module registers every built-in task with `gradpath_lib.runs.register_task`."""
from . import classify  # noqa: F401
from . import lwdna  # noqa: F401
from . import detect  # noqa: F401
from . import probe  # noqa: F401
from . import spectrum  # noqa: F401
