#!/usr/bin/env python3
"""Flash wear of durable history (docs/durability.md): bytes a smolchat server with
`--data-dir` writes to disk per second and per message, at a given message rate, as the
kernel counts them for the process (`write_bytes` in /proc/PID/io: page-cache bytes it
dirtied, an upper bound of what reaches the device; run it on a disk-backed directory, not
tmpfs).

Usage: store-wear.py BINARY DATA_DIR RATE SECONDS [extra server flags...]
Starts BINARY on a free loopback port with --data-dir DATA_DIR (emptied first), one client
says RATE messages a second (64 characters each) in room `wear` for SECONDS (bounded), then
it waits 3 s for the last commits, measures 10 s of idleness (nothing may be written), prints
one JSON line and stops the server. `join_write_bytes`: what the 5 s after joining the room
(its creation) wrote.
Python's standard library only.
"""
import base64, json, os, shutil, socket, struct, subprocess, sys, time


def frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def written(pid):
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise SystemExit("no write_bytes in /proc/PID/io")


def main():
    binary, data_dir, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    shutil.rmtree(data_dir, ignore_errors=True)
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--rate-limit", "0", "--data-dir", data_dir, *sys.argv[5:]],
        stderr=subprocess.PIPE, text=True)
    addr = None
    for line in server.stderr:
        if "listening on " in line:
            addr = line.split("listening on ")[1].split()[0]
            break
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    sock.settimeout(0.0)
    sock.setblocking(False)

    def drain():
        try:
            while sock.recv(1 << 16):
                pass
        except BlockingIOError:
            pass

    time.sleep(0.5)
    drain()
    sock.sendall(frame(json.dumps({"type": "join", "room": "wear"})))
    time.sleep(0.5)
    drain()
    idle_start = written(server.pid)
    time.sleep(5)
    drain()
    idle = written(server.pid) - idle_start
    start = written(server.pid)
    text = "x" * 64
    sent, began = 0, time.monotonic()
    while time.monotonic() - began < seconds:
        due = int((time.monotonic() - began) * rate) + 1
        while sent < due:
            sock.sendall(frame(json.dumps({"type": "say", "room": "wear", "text": text})))
            sent += 1
        drain()
        time.sleep(min(0.01, 1 / rate))
    time.sleep(3)  # the last commits, and the give-back of unused reservations
    drain()
    total = written(server.pid) - start
    elapsed = time.monotonic() - began
    # Idle: nothing said for 10 s; nothing may be written.
    quiet = written(server.pid)
    time.sleep(10)
    idle_after = written(server.pid) - quiet
    server.terminate()
    server.wait(timeout=10)
    print(json.dumps({
        "rate": rate, "seconds": round(elapsed, 1), "messages": sent,
        "write_bytes": total, "bytes_per_second": round(total / elapsed),
        "bytes_per_message": round(total / max(sent, 1)), "join_write_bytes": idle,
        "idle_write_bytes_10s": idle_after,
        "flags": sys.argv[5:],
    }))


main()
