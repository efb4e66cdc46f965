"""Exceptions the executor tests raise in a worker.

Importable by name on both sides: the tests put this directory on the host's
sys.path and, through a call, on the worker's.  Python 3.6 compatible.
"""
import threading


class CustomError(Exception):
    """Crosses back as itself: pickled by its args."""

    def __init__(self, message, code=0):
        Exception.__init__(self, message, code)
        self.message = message
        self.code = code

    def __str__(self):
        return "%s (code %d)" % (self.message, self.code)


class TwoArgError(Exception):
    """Pickles in the worker, but unpickling calls TwoArgError(a) and fails."""

    def __init__(self, a, b):
        Exception.__init__(self, "two args: %s %s" % (a, b))


class LockedError(Exception):
    """Holds a lock, so it cannot even be pickled in the worker."""

    def __init__(self, message):
        Exception.__init__(self, message)
        self.lock = threading.Lock()


def raise_custom(message, code=0):
    raise CustomError(message, code)


def raise_two_arg():
    raise TwoArgError("left", "right")


def raise_locked():
    raise LockedError("locked away")
