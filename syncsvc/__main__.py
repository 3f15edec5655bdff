"""`python -m syncsvc`."""

from syncsvc.cli import main

if __name__ == "__main__":  # parse workers start from a fresh interpreter: never run the CLI
    main()
