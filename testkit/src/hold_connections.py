"""Hold many idle TCP connections for a test: a process of its own, so that the test's
open-files limit is not spent on them.

Usage: python3 hold_connections.py HOST:PORT SRC=N [SRC=N ...]
Opens N connections from each source address, sending nothing, and prints "opened K". Then,
for every line on standard input, prints "closed C answered A": how many of them the server
has closed, and how many it sent a byte on. Exits when standard input closes.
"""
import socket
import sys

host, port = sys.argv[1].rsplit(":", 1)
socks = []
for arg in sys.argv[2:]:
    src, n = arg.split("=")
    for _ in range(int(n)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port is chosen at connect (IP_BIND_ADDRESS_NO_PORT): binding port 0 first
        # searches the whole port range for every socket.
        s.setsockopt(socket.IPPROTO_IP, 24, 1)
        s.bind((src, 0))
        try:
            s.connect((host, int(port)))
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
print(f"opened {len(socks)}", flush=True)

for _ in sys.stdin:
    closed = answered = 0
    for s in socks:
        try:
            data = s.recv(1)
        except BlockingIOError:
            continue
        except OSError:
            closed += 1
            continue
        if data:
            answered += 1
        else:
            closed += 1
    print(f"closed {closed} answered {answered}", flush=True)
