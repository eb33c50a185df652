"""A stand-in child: the real pipeline, except that creating the session segfaults, after some stdout noise."""

import ctypes
import sys

from models_app.validation import child, runtime


def _segfault(*args: object, **kwargs: object) -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


runtime.load = _segfault  # type: ignore[assignment]

if __name__ == "__main__":
    print('{"outcome": "passed"', flush=True)  # noise that must not be taken for a result
    sys.exit(child.main(sys.argv[1:]))
