"""Command line: ``synth-server`` (``main``) and its subcommands."""
from synth_server.cli.main import main

__all__ = ["main"]
