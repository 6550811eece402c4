#!/usr/bin/env python3
"""A minimal backup client written from the protocol document (stdlib only),
used to check that lnvault's server talks to reference-style clients.

usage: refclient.py HOST PORT CHANGES.json RESTORED.json

Backs up the transactions in CHANGES.json ([{"version": N, "statements":
[...]}, ...]) waiting for each ACK, then restores over a new connection and
writes what it received to RESTORED.json.
"""
import json
import socket
import struct
import sys
import zlib

CHANGE, SNAPSHOT, REWIND, REQ_METADATA, RESTORE = 1, 2, 3, 4, 5
ACK, NACK, METADATA, DONE, COMPACT, COMPACT_RES = 6, 7, 8, 9, 10, 11


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise IOError("connection closed")
        buf += chunk
    return bytes(buf)


def send_packet(sock, typ, payload=b""):
    sock.sendall(struct.pack("!BI", typ, len(payload)) + payload)


def recv_packet(sock):
    typ, length = struct.unpack("!BI", recv_exact(sock, 5))
    return typ, recv_exact(sock, length)


def metadata(sock):
    send_packet(sock, REQ_METADATA)
    typ, payload = recv_packet(sock)
    assert typ == METADATA, typ
    return struct.unpack("!IIIQ", payload)


def main():
    host, port, changes_path, out_path = sys.argv[1:5]
    with open(changes_path) as f:
        changes = json.load(f)
    sock = socket.create_connection((host, int(port)), timeout=30)
    proto, version, prev, count = metadata(sock)
    assert proto == 1, proto
    for c in changes:
        payload = struct.pack("!I", c["version"]) + zlib.compress("\0".join(c["statements"]).encode())
        send_packet(sock, CHANGE, payload)
        typ, ack = recv_packet(sock)
        if typ != ACK or struct.unpack("!I", ack)[0] != c["version"]:
            sys.exit("change %d: got packet %d %r" % (c["version"], typ, ack))
    proto, version, prev, count = metadata(sock)
    assert version == changes[-1]["version"], (version, changes[-1]["version"])
    # Rewind the last change and send it again.
    send_packet(sock, REWIND, struct.pack("!I", prev))
    typ, ack = recv_packet(sock)
    assert typ == ACK and struct.unpack("!I", ack)[0] == prev, (typ, ack)
    last = changes[-1]
    send_packet(sock, CHANGE, struct.pack("!I", last["version"]) + zlib.compress("\0".join(last["statements"]).encode()))
    typ, ack = recv_packet(sock)
    assert typ == ACK, typ
    # A compaction on the writer connection.
    send_packet(sock, COMPACT)
    typ, res = recv_packet(sock)
    assert typ == COMPACT_RES, typ
    stats = json.loads(res.decode())

    r = socket.create_connection((host, int(port)), timeout=30)
    send_packet(r, RESTORE)
    restored = []
    while True:
        typ, payload = recv_packet(r)
        if typ == DONE:
            break
        (v,) = struct.unpack("!I", payload[:4])
        data = zlib.decompress(payload[4:])
        if typ == CHANGE:
            restored.append({"version": v, "statements": data.decode().split("\0") if data else []})
        elif typ == SNAPSHOT:
            restored.append({"version": v, "snapshot_bytes": len(data), "sqlite": data[:16] == b"SQLite format 3\0"})
        else:
            sys.exit("unexpected packet %d during restore" % typ)
        send_packet(r, ACK, struct.pack("!I", v))  # allowed, ignored
    with open(out_path, "w") as f:
        json.dump({"compact": stats, "restored": restored}, f)


if __name__ == "__main__":
    main()
