#!/usr/bin/env python3
"""Gateway footprint of a smolchat binary: resident memory at start, with 100 and with 1,000
idle clients, and the time from exec to the first accepted WebSocket connection.

Usage: footprint.py BINARY [--clients 100,1000] [--runs 5] [--tls] [--server "FLAGS"]
--server passes more flags to the server, e.g. --server "--data-dir /var/tmp/full" to time
the start with a full durable store (fill it with examples/store_fill.rs).
With --tls (a binary built with the tls feature) the server gets a self-signed certificate
made with openssl, and every client connects over TLS.
Python standard library only (plus openssl for --tls); loopback only; every wait is bounded.
"""
import argparse, base64, os, resource, socket, ssl, statistics, subprocess, sys, tempfile, time

TLS = None  # (server flags, client context) with --tls
EXTRA = []  # --server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def upgrade(port, timeout=5.0):
    """Opens a WebSocket connection (handshake only) and returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if TLS:
        s = TLS[1].wrap_socket(s, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    return s


def start(binary, port, extra=()):
    tls_flags = TLS[0] if TLS else []
    return subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--log-level", "warn", *tls_flags, *EXTRA, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def first_upgrade(port, t0):
    """Retries the handshake until the server accepts one (at most 10 s); returns the socket."""
    while True:
        try:
            return upgrade(port, timeout=1)
        except (ConnectionRefusedError, ConnectionResetError, ssl.SSLError):
            if time.perf_counter() > t0 + 10:
                raise RuntimeError("server did not come up within 10 s")
            time.sleep(0.001)


def startup_ms(binary):
    """Time from exec to the first completed WebSocket handshake."""
    port = free_port()
    t0 = time.perf_counter()
    p = start(binary, port)
    try:
        s = first_upgrade(port, t0)
        elapsed = (time.perf_counter() - t0) * 1000
        s.close()
        return elapsed
    finally:
        p.terminate()
        p.wait(timeout=10)


def settle(pid, seconds=3.0):
    """Waits (bounded) until the server's RSS stops changing."""
    last, stable_since, end = rss_kib(pid), time.time(), time.time() + seconds
    while time.time() < end:
        time.sleep(0.1)
        now = rss_kib(pid)
        if now != last:
            last, stable_since = now, time.time()
        elif time.time() - stable_since > 0.5:
            break
    return last


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--server", default="")
    args = ap.parse_args()
    EXTRA.extend(args.server.split())
    if args.tls:
        global TLS
        d = tempfile.mkdtemp()
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        context = ssl.create_default_context(cafile=cert)
        TLS = (["--tls-cert", cert, "--tls-key", key], context)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    starts = [startup_ms(args.binary) for _ in range(args.runs)]
    port = free_port()
    p = start(args.binary, port, ["--threads", "1"])
    try:
        first_upgrade(port, time.perf_counter()).close()  # wait until it listens
        idle = settle(p.pid)
        rows = [("at start (idle, 1 thread)", idle, "")]
        socks = []
        for n in [int(x) for x in args.clients.split(",")]:
            while len(socks) < n:
                socks.append(upgrade(port))
            now = settle(p.pid)
            rows.append((f"with {n} idle clients", now, f"{(now - idle) / n:.2f} KiB/client"))
        size = os.path.getsize(args.binary)
        print(f"binary: {args.binary} ({size} bytes)")
        print(f"startup to first accepted WebSocket: median {statistics.median(starts):.1f} ms "
              f"(min {min(starts):.1f}, max {max(starts):.1f}, {args.runs} runs)")
        print("| state | RSS (KiB) | per client |")
        print("|---|---|---|")
        for name, kib, per in rows:
            print(f"| {name} | {kib} | {per} |")
        for s in socks:
            s.close()
    finally:
        p.terminate()
        p.wait(timeout=10)


if __name__ == "__main__":
    main()
