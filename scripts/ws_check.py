#!/usr/bin/env python3
"""A WebSocket client in a few lines of Python's standard library, for smoke tests of a running
server: connects to ADDR, expects `welcome` and the `lobby` room event, says something and gets
it back, then sends the server process PID a signal (default SIGINT) and expects close 1001.

Usage: ws_check.py ADDR PID [SIGINT|SIGTERM]   (exit status 0 on success)
With WS_CHECK_CA=PEM in the environment it speaks wss, trusting that certificate for
`localhost`.
"""
import base64, json, os, signal, socket, ssl, struct, sys

addr, pid = sys.argv[1], int(sys.argv[2])
sig = getattr(signal, sys.argv[3]) if len(sys.argv) > 3 else signal.SIGINT
host, port = addr.rsplit(":", 1)
sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
if os.environ.get("WS_CHECK_CA"):
    context = ssl.create_default_context(cafile=os.environ["WS_CHECK_CA"])
    sock = context.wrap_socket(sock, server_hostname="localhost")
    print(f"   TLS {sock.version()}, certificate for localhost verified")
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(
    f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
)
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = sock.recv(4096)
    if not chunk:
        sys.exit("connection closed during the handshake")
    buf += chunk
head, buf = buf.split(b"\r\n\r\n", 1)
status = head.split(b"\r\n")[0]
if b" 101 " not in status:
    sys.exit(f"expected 101 Switching Protocols, got {status!r}")

def read_exact(n):
    global buf
    while len(buf) < n:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("connection closed mid-frame")
        buf += chunk
    data, buf = buf[:n], buf[n:]
    return data

def read_frame():
    b0, b1 = read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", read_exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", read_exact(8))[0]
    return b0 & 0x0F, read_exact(n)  # server frames are unmasked and, here, unfragmented

def next_event():
    while True:
        opcode, payload = read_frame()
        if opcode == 0x1:
            return json.loads(payload)
        if opcode == 0x8:
            sys.exit(f"unexpected close: {payload!r}")
        # pings and pongs: skipped

def send_text(text):
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

welcome = next_event()
if welcome.get("type") != "welcome":
    sys.exit(f"expected welcome, got {welcome}")
room = next_event()
if room.get("type") != "room" or room.get("room") != "lobby":
    sys.exit(f"expected the lobby room event, got {room}")
print(f"   welcome as {welcome['nick']} from {welcome['server']}; in {room['room']}")

send_text(json.dumps({"type": "say", "room": "lobby", "text": "hello from python"}))
event = next_event()
while event.get("type") == "message" and event.get("text") != "hello from python":
    event = next_event()  # history from an earlier client, if any
if event.get("type") != "message" or event.get("from") != welcome["nick"]:
    sys.exit(f"expected our own message back, got {event}")
print(f"   message {event['id']} came back")

os.kill(pid, sig)
while True:
    opcode, payload = read_frame()
    if opcode == 0x8:
        code = struct.unpack(">H", payload[:2])[0]
        if code != 1001:
            sys.exit(f"expected close 1001 at shutdown, got {code} {payload[2:]!r}")
        print(f"   close {code} ({payload[2:].decode()}) after {sig.name}")
        break
    if opcode == 0x1:
        sys.exit(f"unexpected event at shutdown: {payload!r}")
sock.sendall(bytes([0x88, 0x82]) + b"\0\0\0\0" + struct.pack(">H", 1000))
sock.close()
