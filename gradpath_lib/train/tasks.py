"""Importing this module registers every built-in task with `gradpath_lib.runs.register_task`."""
