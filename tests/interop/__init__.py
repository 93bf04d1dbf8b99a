"""Producers in other languages publish what the worker reads."""
