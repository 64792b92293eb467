"""``python -m cnnbp_cli``: the same as the ``cnnbp`` command."""

from cnnbp_cli.app import main

if __name__ == "__main__":
    main()
