"""UDP echo server for the end-to-end tests: answers each datagram with
`NAME CLIENT-ADDRESS-IT-SEES PAYLOAD`."""
import socket
import sys

name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("listening", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(f"{name} {addr[0]} ".encode() + data, addr)
