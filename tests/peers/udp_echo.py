"""UDP echo server for the end-to-end tests: answers each datagram with
`NAME CLIENT-ADDRESS-IT-SEES PAYLOAD`, or, for a payload starting with
`len `, with `NAME CLIENT-ADDRESS-IT-SEES len=N` (N: the payload's length), so
a test can send big datagrams and get small answers."""
import socket
import sys

name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("listening", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    if data.startswith(b"len "):
        s.sendto(f"{name} {addr[0]} len={len(data)}".encode(), addr)
    else:
        s.sendto(f"{name} {addr[0]} ".encode() + data, addr)
