"""`syncworker schema`: print the routes' event contracts as JSON Schema, for producers."""

from __future__ import annotations

import argparse
import json

from worker.asyncapi import asyncapi
from worker.commands.common import add_config_option, settings_from
from worker.contracts import contracts
from worker.registry import handlers_from_settings

EXAMPLE = """Prints one JSON document: for each routed stream, its envelope and, for each event
type, the JSON Schema (2020-12) of `data` that the handlers' models require (pydantic's
schema of the model; `{}` where no handler declares one; `allOf` where several do; type "*"
for handlers that take every type). Each schema has its own $id, so it can be taken out and
used alone. Handlers with Versions models add `versions`: each schema version's schema.
--asyncapi prints the same contracts as an AsyncAPI 3.0 document instead (a channel per
stream, a message per type, the newest version of versioned models).

examples:
  syncworker schema --config worker.toml > contracts.json
  SYNCWORKER_HANDLERS=app.handlers:sync_payment syncworker schema
  syncworker schema --config worker.toml --asyncapi > asyncapi.json
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "schema",
        help="print the event contracts (JSON Schema) of the routed handlers",
        description="Print, as JSON Schema, the payload each routed handler's model requires.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.add_argument(
        "--asyncapi", action="store_true", help="print an AsyncAPI 3.0 document instead"
    )
    parser.set_defaults(func=schema)


def schema(args: argparse.Namespace) -> int:
    handlers = handlers_from_settings(settings_from(args))
    document = asyncapi(handlers) if args.asyncapi else contracts(handlers)
    print(json.dumps(document, indent=2))
    return 0
