"""`python -m gateway` = `reward-openai`."""

from gateway.cli import main

main()
