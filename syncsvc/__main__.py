"""`python -m syncsvc`, and the `syncsvc` command's entry point."""

from __future__ import annotations

from typing import Any


def main() -> Any:
    """The command line (syncsvc.cli), imported only here: a parse worker re-runs the script
    that started its parent (the `syncsvc` command's, as multiprocessing does for a main module
    given by path), and that script imports this module. With the CLI at the top, every worker
    would import the typer app and all it imports (measured: 4-6 MB of each worker's own)."""
    from syncsvc.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":  # parse workers start from a fresh interpreter: never run the CLI
    main()
