// The benchmark's Bun peer (issue 27): the broadcast server people would write with Bun's own
// pub/sub, uWebSockets underneath. Every connection subscribes to one topic when it opens; every
// text or binary message a client sends is published to that topic with `server.publish`, which
// reaches every subscriber, the sender included (`ws.publish` would skip the sender). That is the
// Go hub's and tt_peer's plain-text protocol, so the load generator measures it with
// `--protocol raw`. Payloads up to 4 KiB, no compression; Bun's defaults otherwise (automatic
// pongs, idle pings, 120 s idle timeout, 16 MiB backpressure limit). Any path is upgraded.
//
// Run with the pinned Bun that scripts/bench.sh installs from npm (@oven/bun-linux-x64):
//   target/bun/node_modules/@oven/bun-linux-x64/bin/bun examples/bun_peer.js --port 8083
//   (or: ... bun_peer.js 127.0.0.1:8083)

let hostname = "127.0.0.1";
let port = 8080;
const args = Bun.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--port" || a === "-port") {
    port = Number(args[++i]);
  } else if (a === "--listen") {
    [hostname, port] = splitAddr(args[++i]);
  } else if (!a.startsWith("-")) {
    [hostname, port] = splitAddr(a);
  } else {
    console.error("usage: bun_peer.js [--port P | --listen ADDR | ADDR]");
    process.exit(2);
  }
}

function splitAddr(s) {
  const at = s.lastIndexOf(":");
  return [s.slice(0, at), Number(s.slice(at + 1))];
}

const TOPIC = "lobby";
const server = Bun.serve({
  hostname,
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response("WebSocket only\n", { status: 426 });
  },
  websocket: {
    maxPayloadLength: 4096,
    perMessageDeflate: false,
    open(ws) {
      ws.subscribe(TOPIC);
    },
    message(_ws, message) {
      server.publish(TOPIC, message, false);
    },
  },
});
