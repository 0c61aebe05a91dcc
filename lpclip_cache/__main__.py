"""``python -m lpclip_cache`` runs the command line."""

from .cli import main

main(prog_name="lpclip-cache")
