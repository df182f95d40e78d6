#!/usr/bin/python3
# tests/data/ws/make_vectors.py — writes WebSocket frame vectors with the
# framing code of python-websockets (10.4, websockets.frames.Frame.serialize),
# an implementation kith did not write. For each direction:
#   <name>.bin  the frames, back to back, as websockets serialised them
#   <name>.txt  one line per frame: opcode fin mask(hex or -) length sha256(payload)
# Run from this directory: /usr/bin/python3 make_vectors.py
import hashlib
import struct

from websockets.frames import Frame, Opcode


def payload(n, salt):
    return bytes((i * 131 + salt) & 0xFF for i in range(n))


KOSME = "κόσμε".encode()

CLIENT = [  # sent by a client: masked
    Frame(Opcode.TEXT, b"Hello, kith"),
    Frame(Opcode.TEXT, KOSME[:3], fin=False),
    Frame(Opcode.PING, b"are you there?"),
    Frame(Opcode.CONT, KOSME[3:8], fin=False),
    Frame(Opcode.CONT, KOSME[8:]),
    Frame(Opcode.BINARY, payload(200, 1)),
    Frame(Opcode.BINARY, payload(65536 + 100, 2)),
    Frame(Opcode.PONG, b""),
    Frame(Opcode.BINARY, b""),
    Frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"done"),
]

SERVER = [  # sent by a server: unmasked
    Frame(Opcode.TEXT, '{"type":"session_start"}'.encode()),
    Frame(Opcode.BINARY, payload(125, 3), fin=False),
    Frame(Opcode.PING, b""),
    Frame(Opcode.CONT, payload(126, 4)),
    Frame(Opcode.TEXT, "\U0001F600".encode()),
    Frame(Opcode.CLOSE, struct.pack("!H", 1001) + "au revoir ☺".encode()),
]


def write(name, frames, mask):
    wire = bytearray()
    lines = []
    for f in frames:
        raw = f.serialize(mask=mask)
        header = 2 + (2 if 126 <= len(f.data) < 65536 else 8 if len(f.data) >= 65536 else 0)
        key = raw[header:header + 4].hex() if mask else "-"
        wire += raw
        lines.append(f"{int(f.opcode)} {int(f.fin)} {key} {len(f.data)} {hashlib.sha256(f.data).hexdigest()}")
    with open(f"{name}.bin", "wb") as out:
        out.write(wire)
    with open(f"{name}.txt", "w") as out:
        out.write("\n".join(lines) + "\n")


write("websockets_client", CLIENT, True)
write("websockets_server", SERVER, False)
