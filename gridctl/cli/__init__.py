"""The command line: Typer apps, one module per command group (parse -> service -> render)."""
