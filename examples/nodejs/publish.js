// Publish events from Node.js to a Redis stream that syncworker reads, with ioredis.
//
// The field convention (the same as Python's worker.Publisher):
//   type            event type, e.g. "order.completed"          (required)
//   data            the payload as a JSON document               (required; always JSON)
//   key             entity key: events of one key are handled in order
//   event_id        the publisher's unique id of the event
//   version         the entity's version (an integer)
//   schema_version  the version of the payload's shape, for handlers with Versions models
//
// Usage:
//   REDIS_URL=redis://localhost:6379/0 node publish.js orders             # a sample order
//   node publish.js orders - < events.jsonl   # one {"type", "data", "key", ...} per line
//
// Prints each new entry id.
"use strict";

const crypto = require("node:crypto");
const readline = require("node:readline");
const Redis = require("ioredis");

/** The stream fields of one event, as a flat [name, value, ...] list for XADD. */
function eventFields({ type, data = null, key, eventId, version, schemaVersion }) {
  if (typeof type !== "string" || type === "") throw new TypeError("type is required");
  const fields = ["type", type];
  if (key !== undefined && key !== null) fields.push("key", String(key));
  fields.push("data", JSON.stringify(data)); // a string becomes a JSON string too
  fields.push("event_id", eventId ?? crypto.randomUUID());
  if (version !== undefined && version !== null) {
    if (!Number.isInteger(version)) throw new TypeError("version must be an integer");
    fields.push("version", String(version));
  }
  if (schemaVersion !== undefined && schemaVersion !== null) {
    if (!Number.isInteger(schemaVersion)) throw new TypeError("schemaVersion must be an integer");
    fields.push("schema_version", String(schemaVersion));
  }
  return fields;
}

/** Append one event to `stream`; resolves to its entry id. */
async function publish(redis, stream, event) {
  return redis.xadd(stream, "*", ...eventFields(event));
}

async function* readEvents(fromStdin) {
  if (!fromStdin) {
    yield {
      type: "order.completed",
      key: "order-1001",
      version: 3,
      data: { order_id: 1001, customer: "c-7", amount_cents: 1990, currency: "EUR" },
    };
    return;
  }
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (line.trim() === "") continue;
    const e = JSON.parse(line);
    yield { ...e, eventId: e.event_id ?? e.eventId, schemaVersion: e.schema_version ?? e.schemaVersion };
  }
}

async function main() {
  const stream = process.argv[2];
  if (!stream) {
    console.error("usage: node publish.js STREAM [- < events.jsonl]");
    process.exit(2);
  }
  const url = process.env.REDIS_URL || process.env.SYNCWORKER_REDIS_URL || "redis://localhost:6379/0";
  // No retries: a publisher that cannot reach Redis should say so, not hang.
  const redis = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: () => null });
  try {
    for await (const event of readEvents(process.argv[3] === "-")) {
      console.log(await publish(redis, stream, event));
    }
  } finally {
    redis.disconnect();
  }
}

module.exports = { eventFields, publish };

if (require.main === module) {
  main().catch((err) => {
    console.error(`publish.js: ${err.message}`);
    process.exit(1);
  });
}
