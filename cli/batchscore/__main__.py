"""Entry point for ``python -m batchscore`` and the ``batchscore`` console script."""

import sys


def main() -> None:
    """Run the command line and exit with its status."""
    from batchscore.app import run_cli

    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
