"""CLI commands. Each module defines ``register(subparsers)``; the command itself only parses,
builds a config and calls the library."""
