"""``python -m app.cli``: the command line, as the service starts its replay processes."""

from app.cli import main

main()
