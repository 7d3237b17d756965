"""`python -m resdepth ...` and the `resdepth` command: `--version` and the completion's queries
answer at once (nothing heavy is imported for them); everything else goes to the CLI."""

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):  # the CLI's imports (Hydra, the schema) bring in torch
        from . import __version__

        print(f"resdepth {__version__}")
        return
    if argv[:2] == ["completion", "query"]:  # at every TAB: from a cached table, without torch
        from .completion import query

        query(argv[2:])
        return
    from .cli import main as cli

    cli(argv)


if __name__ == "__main__":  # not when a worker process re-imports the main module (spawn)
    main()
