import os, sys, time
d = sys.argv[1]; n = int(sys.argv[2]); size = int(sys.argv[3])
path = os.path.join(d, "compress-test")
fd = os.open(path, os.O_RDWR|os.O_CREAT|os.O_TRUNC, 0o644)
total = n * size
z = b"\0" * (1<<20)
for i in range(total // (1<<20) + 1): os.write(fd, z)
os.fsync(fd); time.sleep(3)
bufs = {"const": [bytes([0x3C]) * size] * 8, "random": [os.urandom(size) for _ in range(8)]}
for rnd in range(6):
    mode = ("const", "random")[rnd % 2] if rnd < 4 else ("random", "const")[rnd % 2]
    off = 0; t = time.perf_counter()
    for i in range(n):
        os.pwrite(fd, bufs[mode][i % 8], off); os.fdatasync(fd); off += size
    el = time.perf_counter() - t
    print(f"round {rnd} {mode}: {n/el:.0f} writes/s, {n*size/el/1e6:.0f} MB/s", flush=True)
os.unlink(path)
