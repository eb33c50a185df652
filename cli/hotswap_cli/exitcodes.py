"""The exit codes of `hotswap`, one per outcome a CI job branches on (documented in the README and `--help`)."""

OK = 0
ERROR = 1  # the API refused the request (its code and message are printed) or could not be reached
USAGE = 2  # a bad command line (click's own code)
VALIDATION_FAILED = 3  # the version failed validation (or its bytes did not match the declared SHA-256)
NEEDS_APPROVAL = 4  # the version cannot be executed here: an Admin must approve it before it ships
ROLLED_BACK = 5  # the distribution was rolled back (automatically by the health judge, or by an operator)
HALTED = 6  # the orchestrator paused the distribution (failed installs or a failing verdict): an operator decides
ABORTED = 7  # the distribution was aborted
TIMED_OUT = 8  # --timeout passed before the outcome was known
INTERRUPTED = 130  # Ctrl-C (the shell's convention: 128 + SIGINT)

HELP = """Exit codes: 0 success; 1 the API refused the request or could not be reached; 2 bad command line;
3 validation failed; 4 the version needs an Admin's approval; 5 the distribution was rolled back;
6 the distribution was halted (paused by the orchestrator); 7 the distribution was aborted; 8 --timeout passed;
130 interrupted (an upload run again resumes)."""
