"""`syncworker demo`: run the order & payment example end to end; `demo publish`: only publish."""

from __future__ import annotations

import argparse
import asyncio

from worker.commands.common import add_config_option, settings_from

EXAMPLE = """examples:
  syncworker demo                      # everything, on a local or throwaway Redis
  syncworker demo --no-postgres        # without the PostgreSQL sink
  syncworker demo --keep               # keep the keys and print redis-cli commands for them
  SYNCWORKER_REDIS_URL=redis://redis:6379/0 syncworker demo publish --orders 5000
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the order & payment example end to end",
        description="Publish the order service's events (duplicates, out-of-order versions "
        "and a malformed event included) over a few seconds to three `syncworker run` "
        "processes; SIGKILL one and SIGTERM another mid-run (a replacement starts), then "
        "account for every event (applied, dead-lettered, lost, applied twice), time the "
        "hand-overs, and print the synced copies and the real names of the keys used.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _scenario_options(parser)
    parser.add_argument("--no-postgres", action="store_true", help="leave out the PostgreSQL sink")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's keys, database and logs (and a throwaway redis-server running), "
        "and print the commands to look at them and to remove them",
    )
    parser.set_defaults(func=demo)
    actions = parser.add_subparsers(dest="demo_action", metavar="ACTION")
    publish = actions.add_parser(
        "publish",
        help="only publish the scenario's events to SYNCWORKER_REDIS_URL",
        description="Append the scenario's events to the orders stream of the Redis in "
        "SYNCWORKER_REDIS_URL (or --config) and exit; workers started with "
        "examples/order_payment/worker.toml consume them.",
    )
    _scenario_options(publish)
    publish.add_argument(
        "--stream", default="orders", help="stream to publish to (default: orders)"
    )
    add_config_option(publish)
    publish.set_defaults(func=publish_only)


def _scenario_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--orders", type=int, default=1000, help="orders to simulate (default: 1000)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")


def demo(args: argparse.Namespace) -> int:
    from worker.examples.demo import main

    return main(args.orders, args.seed, not args.no_postgres, args.keep)


def publish_only(args: argparse.Namespace) -> int:
    from worker.connection import connect
    from worker.examples.demo import publish
    from worker.examples.order_payment import history

    settings = settings_from(args)
    scenario = history(args.orders, args.seed)

    async def go() -> None:
        client = connect(settings)
        try:
            await publish(client, args.stream, scenario.published)
        finally:
            await client.aclose()

    asyncio.run(go())
    print(
        f"published {len(scenario.published)} events for {args.orders} orders to "
        f"{args.stream!r} at {settings.masked_url}"
    )
    return 0
