// Enqueue oqron_nats jobs from Node, following docs/protocol.md (wire protocol 1), with only
// the `nats` npm package: no Python, no oqron library.
//
//   node enqueue.mjs '<spec JSON>'
//   spec: {"url", "namespace", "queue", "jobs": [{"id", "data", "priority"?, "delay_ms"?,
//          "correlation_id", "traceparent"?}]}
//   env OQRON_NODE_MODULES: the node_modules directory that holds `nats`
//
// Prints one JSON line per job: {"id", "created"} (created false: the id existed already).
import { createRequire } from "node:module";

const require = createRequire(process.env.OQRON_NODE_MODULES + "/");
const { connect, headers } = require("nats");

const spec = JSON.parse(process.argv[2]);
const { namespace: ns, queue: q } = spec;
const nc = await connect({ servers: spec.url, name: "oqron-node-publisher" });
const js = nc.jetstream();
const kv = await js.views.kv(`oqron_${ns}_jobs_${q}`, { bindOnly: true });
const encoder = new TextEncoder();

for (const job of spec.jobs) {
  const now = new Date();
  const delayed = (job.delay_ms ?? 0) > 0;
  const state = delayed ? "delayed" : "waiting";
  const record = {
    id: job.id,
    queue: q,
    state,
    data: job.data,
    created_at: now.toISOString(),
    correlation_id: job.correlation_id,
    priority: job.priority ?? 0,
    run_at: delayed ? new Date(now.getTime() + job.delay_ms).toISOString() : null,
    trace: job.traceparent ? { traceparent: job.traceparent } : {},
    timeline: [{ at: now.toISOString(), state, reason: "added" }],
    triggered_by: "node",
    v: 1,
  };
  // 1. the record, created only if the id is new (the idempotency rule)
  let stored = record;
  let created = true;
  try {
    await kv.create(`${q}.${job.id}`, encoder.encode(JSON.stringify(record)));
  } catch (err) {
    if (!/wrong last sequence/i.test(String(err.message))) throw err;
    created = false;
    stored = (await kv.get(`${q}.${job.id}`)).json();
    if (stored.state !== "waiting" && stored.state !== "delayed") {
      console.log(JSON.stringify({ id: job.id, created }));
      continue; // claimed already: nothing to send again
    }
  }
  // 2. its entry in the state index
  await js.publish(`oqron.${ns}.idx.${q}.${stored.state}.${job.id}`, new Uint8Array());
  // 3. the job message (sent again as is for an existing, unclaimed job)
  const lane = `oqron.${ns}.q.${q}.p${stored.priority ?? 0}.${job.id}`;
  const h = headers();
  h.set("Oqron-Correlation-Id", stored.correlation_id);
  for (const [key, value] of Object.entries(stored.trace ?? {})) h.set(key, value);
  let subject = lane;
  if (stored.state === "delayed") {
    subject = `oqron.${ns}.s.${q}.${job.id}`;
    h.set("Nats-Schedule", `@at ${stored.run_at}`);
    h.set("Nats-Schedule-Target", lane);
  }
  const msgID = `${job.id}:${stored.enqueued ?? 1}`;
  await js.publish(subject, encoder.encode(job.id), { headers: h, msgID });
  console.log(JSON.stringify({ id: job.id, created }));
}
await nc.drain();
