"""`python -m sammil_deploy` runs the CLI."""

from sammil_deploy.cli import main

main()
