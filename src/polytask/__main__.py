"""``python -m polytask``: the command line, for launchers that take a module
(``torchrun ... -m polytask train CONFIG``)."""

from polytask.cli import main

if __name__ == "__main__":
    main()
