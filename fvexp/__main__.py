"""`python -m fvexp [overrides]`: the same as the `fvexp` command."""

from fvexp.app.cli import main

if __name__ == "__main__":
    main()
