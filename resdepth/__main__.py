"""`python -m resdepth ...`: the `resdepth` command."""

from .cli import main

if __name__ == "__main__":  # not when a worker process re-imports the main module (spawn)
    main()
