"""A package whose submodule `sub` is only imported when reached through an attribute."""
NAME = "wetlite_test_pkg"


def f(x):
    return x + 1
