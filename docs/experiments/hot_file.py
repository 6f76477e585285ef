# Usage: python3 hot_file.py DIR RECORD_BYTES WRITES_PER_ROUND ROUNDS WARM_PASSES (BENCHMARKS.md, "Runs 33–40").
# Durable 16 KiB appends: into a 256 MiB file written over and over (the raw loop's file by the 16 KiB
# rows of `keel bench journal`) vs marching through a fresh zero-filled file (Keel's segments).
import os, sys, time, statistics
D = sys.argv[1]; size = int(sys.argv[2]); per = int(sys.argv[3]); rounds = int(sys.argv[4]); warm = int(sys.argv[5])
HOT = 256 << 20
def fill(p, n, byte=b'\0'):
    fd = os.open(p, os.O_CREAT | os.O_TRUNC | os.O_RDWR)
    chunk = byte * (64 << 10)
    for i in range(n // (64 << 10)):
        os.pwrite(fd, chunk, i * (64 << 10))
    os.fsync(fd); return fd
hot = fill(os.path.join(D, 'hot.dat'), HOT)
buf = os.urandom(size)
off = 0
for _ in range(warm * HOT // size):   # rewrite the hot file `warm` times, durably, as the raw loop does
    os.pwrite(hot, buf, off); os.fdatasync(hot); off = (off + size) % HOT
fresh = fill(os.path.join(D, 'fresh.dat'), ((size * per * rounds) // (64 << 10) + 2) * (64 << 10))
time.sleep(5)
offs = {'hot': off, 'fresh': 0}; fds = {'hot': hot, 'fresh': fresh}; res = {'hot': [], 'fresh': []}
for r in range(rounds):
    for n in (['hot', 'fresh'] if r % 2 == 0 else ['fresh', 'hot']):
        fd = fds[n]; t = time.perf_counter()
        for _ in range(per):
            os.pwrite(fd, buf, offs[n]); os.fdatasync(fd)
            offs[n] = (offs[n] + size) % HOT if n == 'hot' else offs[n] + size
        res[n].append(per / (time.perf_counter() - t))
    print(r, f"hot {res['hot'][-1]:.0f}/s fresh {res['fresh'][-1]:.0f}/s fresh/hot {res['fresh'][-1]/res['hot'][-1]:.3f}", flush=True)
print('median fresh/hot', round(statistics.median(f / h for f, h in zip(res['fresh'], res['hot'])), 3))
