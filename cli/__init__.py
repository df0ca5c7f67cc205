"""The `clipshield` command line: `main.py` dispatches, `commands/` holds one thin module per subcommand."""
