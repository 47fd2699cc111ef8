"""The pipeline layer: one module per DVC stage, mounted as the `localagg` Typer CLI.

Each stage reads only its own validated section of params.yaml, calls the `localagg`
library, and writes its outputs and metrics atomically.
"""
