"""``python -m lamina``: the same command line as the ``lamina`` script."""

from lamina.cli import main

if __name__ == "__main__":
    main()
