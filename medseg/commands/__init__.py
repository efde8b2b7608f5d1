"""One module per ``medseg`` sub-command, each with ``add_arguments(parser)`` and ``run(args) -> int``."""
