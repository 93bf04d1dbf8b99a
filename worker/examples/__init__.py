"""Scenarios that ship with the package, so `syncworker demo` works from any installation."""
