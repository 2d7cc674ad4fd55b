"""WebSocket echo server for the end-to-end tests (Python `websockets`, Debian's).

Greets each connection with {"backend": NAME, "client": ADDRESS-IT-SEES}, then
echoes every text and binary frame, except the text "push N", which it answers
with a binary frame of N bytes (so a test can make the server send big frames
without the client sending any), and text starting "len ", which it answers
with its length (so the client can send big frames and get small answers). Prints a line when each connection opens
("connection ADDRESS") and one when it ends ("closed ADDRESS"), so a test can
tell which endpoint saw which client, and when it lost one.
"""
import asyncio
import json
import sys

import websockets


async def main(name, port):
    async def handler(ws, path=None):
        client = ws.remote_address[0]
        print(f"connection {client}", flush=True)
        try:
            await ws.send(json.dumps({"backend": name, "client": client}))
            async for message in ws:
                if isinstance(message, str) and message.startswith("push "):
                    n = int(message[5:])
                    await ws.send(bytes(i % 251 for i in range(n)))
                elif isinstance(message, str) and message.startswith("len "):
                    await ws.send(str(len(message)))
                else:
                    await ws.send(message)
        finally:
            print(f"closed {client}", flush=True)

    async with websockets.serve(handler, "0.0.0.0", port, max_size=None, ping_interval=None):
        print("listening", flush=True)
        await asyncio.Future()


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
