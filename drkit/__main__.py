"""``python -m drkit``: the command line (the daemon starts its followers this way)."""

from drkit.cli.main import main

main()
