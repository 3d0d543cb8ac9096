"""Subcommands of the `gradpath` command line, one module each (see `gradpath_lib.cli`)."""
