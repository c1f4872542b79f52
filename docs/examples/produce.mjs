// Enqueue an email from Node with node-redis, in mailfleet wire format v1.
//
//   npm install --prefix docs/examples      (its package.json pins node-redis)
//   node docs/examples/produce.mjs [redis-url] [prefix]
import { createClient } from "redis";
import { randomBytes } from "node:crypto";

function uuid7() {
  const b = Buffer.concat([Buffer.alloc(6), randomBytes(10)]);
  b.writeUIntBE(Date.now(), 0, 6);
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function fnv1a32(s) {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(s, "utf8")) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

const url = process.argv[2] ?? "redis://127.0.0.1:6379";
const prefix = process.argv[3] ?? "mf";
const partitions = Number(process.env.MAILFLEET_PARTITIONS ?? "1");
const client = await createClient({ url }).connect();

const id = uuid7();
const p = fnv1a32(id) % partitions;
await client.xAdd(`${prefix}:{${p}}:tx`, "*", {
  v: "1",
  id,
  enqueued_at: String(Date.now()),
  payload: JSON.stringify({
    to: ["ada@example.com"],
    from: "Shop <shop@example.com>",
    subject: "Password reset",
    text: "Your reset code is 123456",
  }),
});
console.log(id);
await client.quit();
