"""mgh-reporter: a durable outbox relay from migration tools to AWS Migration Hub."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
