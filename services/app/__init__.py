"""Entry points: the client API, running a stack, selfies, the CLI."""
