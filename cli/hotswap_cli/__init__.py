"""The `hotswap` command line: HotSwap's API for CI and people (upload, validation, devices, rollouts).

A separate distribution (cli/pyproject.toml) that needs neither Django nor the server's code: click for the
command line, rich for progress bars, httpx for HTTP.
"""
