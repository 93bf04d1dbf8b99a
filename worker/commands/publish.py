"""`syncworker publish`: append one event to a stream, in the field convention handlers read."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import get_args

from redis.asyncio import Redis

from worker.commands.common import add_config_option, settings_from, start_tracing
from worker.commands.support import EXIT_FAILED, CommandError, execute
from worker.errors import NotReplicated
from worker.partitions import check_partitioned_name, stream_for
from worker.publish import PublishEnvelope, Publisher

EXAMPLE = """The entry gets the fields type, data (JSON) and, when given, key, event_id, version
and schema_version. --data - reads the JSON from standard input. Prints the new entry id (and,
with --partitions, the partition stream it went to). --envelope cloudevents writes a
structured CloudEvent (one field `data`, as Dapr does), cloudevents-binary one `ce_*` field
per attribute with the payload in `data`; routes with envelope = "cloudevents" read both.

examples:
  syncworker publish orders --type order.completed --key order-42 \\
    --data '{"order_id": 42, "total": "19.90"}' --event-id 5f0c... --version 3
  echo '{"order_id": 42}' | syncworker publish orders --type order.created --key order-42 --data -
  syncworker publish orders --envelope cloudevents --source /checkout --type order.paid \
    --key order-42 --data '{"order_id": 42}'
  syncworker publish orders --partitions 8 --type order.paid --key order-42 --data '{}'
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "publish",
        help="append one event to a stream",
        description="Append one event to STREAM, as producers using worker.Publisher do.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.add_argument("stream", metavar="STREAM", help="stream to append to")
    parser.add_argument("--type", required=True, metavar="T", help="event type")
    parser.add_argument(
        "--key", metavar="K", help="entity key: events of one key are handled in order (optional)"
    )
    parser.add_argument(
        "--data", required=True, metavar="JSON", help="payload as JSON, or - for stdin"
    )
    parser.add_argument("--event-id", metavar="ID", help="publisher's unique event id")
    parser.add_argument("--version", type=int, metavar="N", help="entity version (integer)")
    parser.add_argument(
        "--schema-version",
        type=int,
        metavar="N",
        help="version of the payload's shape, for handlers with Versions models (integer)",
    )
    parser.add_argument(
        "--envelope",
        choices=get_args(PublishEnvelope),
        default="syncworker",
        help="entry layout: syncworker fields (default), or a CloudEvent in structured or "
        "binary mode",
    )
    parser.add_argument(
        "--source",
        default="syncworker",
        metavar="URI",
        help="the CloudEvents source attribute (with --envelope cloudevents*; default syncworker)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="STREAM is split into N partitions {STREAM:0}..{STREAM:N-1}: append to the one of "
        "--key (CRC-32 of the key mod N; no key: partition 0)",
    )
    parser.add_argument(
        "--maxlen",
        type=int,
        metavar="N",
        help="trim the stream to about N entries (XADD MAXLEN ~); beware: this can delete "
        "entries a slow group has not processed yet, see `syncworker trim --help`",
    )
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="wait until N replicas hold the entry (Redis WAIT), so a failover cannot lose it; "
        "exit 1 if they do not confirm within --wait-timeout",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long --wait-replicas waits (default 1.0)",
    )
    parser.set_defaults(func=publish)


def publish(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    raw = sys.stdin.read() if args.data == "-" else args.data
    try:
        document = json.loads(raw)
    except ValueError as exc:
        print(f"syncworker: error: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if args.maxlen is not None and args.maxlen < 1:
        print("syncworker: error: --maxlen must be at least 1", file=sys.stderr)
        return 2
    if args.wait_replicas < 0 or args.wait_timeout <= 0:
        print(
            "syncworker: error: --wait-replicas must be >= 0 and --wait-timeout > 0",
            file=sys.stderr,
        )
        return 2

    if args.partitions is not None:
        try:
            check_partitioned_name(args.stream, args.partitions)
        except ValueError as exc:
            print(f"syncworker: error: --partitions: {exc}", file=sys.stderr)
            return 2

    stop_tracing = start_tracing(settings)
    try:
        return execute(settings, partial(_publish, args, document))
    finally:
        if stop_tracing is not None:
            stop_tracing()


async def _publish(args: argparse.Namespace, document: object, redis: Redis) -> int:
    try:
        publisher = Publisher(
            redis,
            maxlen=args.maxlen,
            envelope=args.envelope,
            source=args.source,
            wait_replicas=args.wait_replicas,
            wait_timeout=args.wait_timeout,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with _traced():
        try:
            entry_id = await publisher.publish(
                args.stream,
                args.type,
                document,
                key=args.key,
                event_id=args.event_id,
                version=args.version,
                schema_version=args.schema_version,
                partitions=args.partitions,
            )
        except TypeError as exc:
            raise CommandError(str(exc)) from None
        except NotReplicated as exc:
            print(exc.entry_id)  # it is on the primary: the id lets the caller find it
            raise CommandError(str(exc), code=EXIT_FAILED) from None
    if args.partitions:
        print(entry_id, stream_for(args.stream, args.key, args.partitions))
    else:
        print(entry_id)
    return 0


def _traced() -> AbstractContextManager[None]:
    """The caller's trace (`TRACEPARENT`, `TRACESTATE`) as the current context, when
    OpenTelemetry is loaded (`SYNCWORKER_TRACING`); nothing otherwise."""
    if "opentelemetry.trace" not in sys.modules:
        return nullcontext()
    from worker.tracing import attached, context_from_environment

    return attached(context_from_environment())
