#!/usr/bin/env python3
"""A minimal backup server written from the protocol document (stdlib only),
keeping the backup in memory; used to check that lnvault's socket: backend
talks to reference-style servers.

usage: refserver.py   (prints the port it listens on, then serves)
"""
import json
import socket
import struct
import sys
import threading
import zlib

CHANGE, SNAPSHOT, REWIND, REQ_METADATA, RESTORE = 1, 2, 3, 4, 5
ACK, NACK, METADATA, DONE, COMPACT, COMPACT_RES = 6, 7, 8, 9, 10, 11

lock = threading.Lock()
log = []  # (type, version, raw payload after decompression)
state = {"version": 0, "prev": 0, "count": 0}


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


def serve(conn):
    with conn:
        while True:
            try:
                typ, length = struct.unpack("!BI", recv_exact(conn, 5))
                payload = recv_exact(conn, length)
            except IOError:
                return
            with lock:
                if typ in (CHANGE, SNAPSHOT):
                    (v,) = struct.unpack("!I", payload[:4])
                    data = zlib.decompress(payload[4:])
                    if typ == SNAPSHOT:
                        log.clear()
                    log.append((typ, v, data))
                    state["prev"], state["version"] = state["version"], v
                    state["count"] += 1
                    send_packet(conn, ACK, struct.pack("!I", v))
                elif typ == REWIND:
                    (to,) = struct.unpack("!I", payload)
                    if to != state["prev"] or not log:
                        send_packet(conn, NACK, struct.pack("!I", state["version"]))
                    else:
                        log.pop()
                        state["version"] = to
                        state["prev"] = log[-2][1] if len(log) > 1 else 0
                        state["count"] -= 1
                        send_packet(conn, ACK, struct.pack("!I", to))
                elif typ == REQ_METADATA:
                    send_packet(conn, METADATA, struct.pack("!IIIQ", 1, state["version"], state["prev"], state["count"]))
                elif typ == RESTORE:
                    for t, v, data in log:
                        send_packet(conn, t, struct.pack("!I", v) + zlib.compress(data))
                    send_packet(conn, DONE)
                elif typ == COMPACT:
                    size = sum(len(d) for _, _, d in log)
                    stats = {"before": {"backupsize": size, "version_count": state["count"]},
                             "after": {"version_count": state["count"], "backupsize": size}}
                    send_packet(conn, COMPACT_RES, json.dumps(stats).encode())
                # ACK, NACK, METADATA, DONE, COMPACT_RES from a client: ignored


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
