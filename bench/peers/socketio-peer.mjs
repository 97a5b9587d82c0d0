// The peer of docs/benchmarks.md#targets: one Node process running Socket.IO 4 with @socket.io/redis-adapter,
// the stock way to scale Socket.IO out over Redis. Each client joins the room named by its
// `key` query parameter (the virtual key id). Events come in the way they reach Herald's
// gateway nodes, on Redis pub/sub: `PUBLISH {prefix}:{keyId} <client object JSON>` becomes
// `io.to(keyId).emit("SpendUpdate", object)`, which the adapter also publishes for other nodes.
//
// Env: PEER_LISTEN (default 127.0.0.1:9200), REDIS_URL (default redis://127.0.0.1:6379),
//      PEER_PREFIX (default peer), PEER_EMIT (adapter: io.to(room).emit through the adapter, the
//      default; local: io.local.to(room).emit, for several peers that each read the feed, as
//      Herald's nodes do, where adapter broadcasts would deliver every event once per node).
// Prints `listening on http://host:port` when ready.
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const [host, port] = (process.env.PEER_LISTEN ?? "127.0.0.1:9200").split(":");
const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const prefix = process.env.PEER_PREFIX ?? "peer";

const pubClient = createClient({ url });
const subClient = pubClient.duplicate();
const feed = pubClient.duplicate();
for (const c of [pubClient, subClient, feed]) {
  // node-redis reconnects by itself; without a handler a dropped connection kills the process.
  c.on("error", (e) => console.error(`redis: ${e.message}`));
}
await Promise.all([pubClient.connect(), subClient.connect(), feed.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient),
  transports: ["websocket"],
  serveClient: false,
});

io.on("connection", (socket) => {
  const key = socket.handshake.query.key;
  if (typeof key === "string" && key.length > 0) socket.join(key);
});

const target = process.env.PEER_EMIT === "local" ? io.local : io;
await feed.pSubscribe(`${prefix}:*`, (message, channel) => {
  const room = channel.slice(prefix.length + 1);
  target.to(room).emit("SpendUpdate", JSON.parse(message));
});

httpServer.listen(Number(port), host, () => {
  const a = httpServer.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
