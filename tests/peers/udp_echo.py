"""UDP echo server for the end-to-end tests: answers each datagram with
`NAME CLIENT-ADDRESS-IT-SEES PAYLOAD`, or, for a payload starting with
`len `, with `NAME CLIENT-ADDRESS-IT-SEES len=N` (N: the payload's length), so
a test can send big datagrams and get small answers; for `big N`, with
`NAME CLIENT-ADDRESS-IT-SEES ` and N bytes, sent without DF, so a test can get
big answers the path must fragment."""
import socket
import sys

name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
# IP_MTU_DISCOVER (10): IP_PMTUDISC_DONT (0) sends without DF; WANT (1) is the default.
MTU_DISCOVER, DONT, WANT = 10, 0, 1
print("listening", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    if data.startswith(b"big "):
        head = f"{name} {addr[0]} ".encode()
        s.setsockopt(socket.IPPROTO_IP, MTU_DISCOVER, DONT)
        s.sendto(head + b"y" * int(data[4:]), addr)
        s.setsockopt(socket.IPPROTO_IP, MTU_DISCOVER, WANT)
    elif data.startswith(b"len "):
        s.sendto(f"{name} {addr[0]} len={len(data)}".encode(), addr)
    else:
        s.sendto(f"{name} {addr[0]} ".encode() + data, addr)
