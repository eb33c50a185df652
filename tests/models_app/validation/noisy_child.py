"""A stand-in child: the real one, after writing JSON-looking noise to stdout and stderr."""

import sys

from models_app.validation import child

if __name__ == "__main__":
    print('{"outcome": "failed", "summary": "noise"}', flush=True)
    print("warning: something chatty", file=sys.stderr, flush=True)
    sys.exit(child.main(sys.argv[1:]))
