"""Races 6 create-if-absent PUTs (If-None-Match: *) per key against an S3 server on 127.0.0.1:PORT and counts
the keys that did not get exactly one winner. Usage: python3 .ci/moto_race.py PORT ROUNDS (see moto_server.py).
"""
import sys, threading, http.client
port = int(sys.argv[1]); rounds = int(sys.argv[2])
def req(method, path, headers={}, body=b""):
    c = http.client.HTTPConnection("127.0.0.1", port); c.request(method, path, body=body, headers=headers)
    r = c.getresponse(); r.read(); c.close(); return r.status
req("PUT", "/racebucket")
double = 0
for i in range(rounds):
    wins = []; barrier = threading.Barrier(6)
    def put(j):
        barrier.wait()
        wins.append(req("PUT", f"/racebucket/k{i}", {"If-None-Match": "*"}, bytes([j]) * 100))
    ts = [threading.Thread(target=put, args=(j,)) for j in range(6)]
    [t.start() for t in ts]; [t.join() for t in ts]
    if wins.count(200) != 1: double += 1
print(f"rounds with != 1 winner: {double} of {rounds}")
