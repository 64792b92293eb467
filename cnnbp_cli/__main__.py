"""``python -m cnnbp``: the same as the ``cnnbp`` command."""

from cnnbp.app import main

if __name__ == "__main__":
    main()
