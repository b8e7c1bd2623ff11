"""`python -m aarmc` is the `aarmc` command."""

from aarmc.cli import main

if __name__ == "__main__":
    main()
