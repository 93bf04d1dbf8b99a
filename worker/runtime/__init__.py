"""The engine: read, dispatch, settle, and keep every held entry safe from takeover.

`worker.runtime.worker.Worker` assembles the parts; each module owns one of them.
"""
