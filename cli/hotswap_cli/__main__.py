"""python -m hotswap_cli: the same as the `hotswap` console script."""

from hotswap_cli.main import main

main()
