"""The Typer commands: each parses its options, calls the library, renders."""
