"""``python -m convo`` runs the command line."""

from convo.cli import main

main()
