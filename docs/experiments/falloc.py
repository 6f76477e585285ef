# Durable appends (pwrite + fdatasync) into a fresh 64 MiB file prepared in one of several ways, the ways
# alternating, fresh files each round:
#   zero    writing zeros (how Keel prepares spares)
#   falloc  posix_fallocate (unwritten extents on ext4)
#   a5      writing a non-zero byte
#   rezero  writing 0xA5, fsync, then zeros over it (zeros over blocks that held data)
# `a5` and `rezero` test whether the host treats zero writes specially (detect-zeroes, thin provisioning).
# Usage: python3 falloc.py DIR WRITES RECORD_BYTES ROUNDS [MODES, default zero,falloc]
import os, sys, time
D = sys.argv[1]; N = int(sys.argv[2]); BS = int(sys.argv[3]); ROUNDS = int(sys.argv[4])
MODES = (sys.argv[5] if len(sys.argv) > 5 else 'zero,falloc').split(',')
SIZE = 64 << 20
def fill(fd, byte):
    chunk = bytes([byte]) * (1 << 20)
    for off in range(0, SIZE, 1 << 20):
        os.pwrite(fd, chunk, off)
    os.fsync(fd)
def prep(path, mode):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if mode == 'zero':
        fill(fd, 0)
    elif mode == 'falloc':
        os.posix_fallocate(fd, 0, SIZE); os.fsync(fd)
    elif mode == 'a5':
        fill(fd, 0xA5)
    elif mode == 'rezero':
        fill(fd, 0xA5); fill(fd, 0)
    else:
        sys.exit(f'unknown mode {mode}')
    os.close(fd)
    dfd = os.open(D, os.O_RDONLY); os.fsync(dfd); os.close(dfd)
def run(path):
    fd = os.open(path, os.O_RDWR)
    buf = os.urandom(BS); lat = []
    t0 = time.perf_counter()
    for i in range(N):
        s = time.perf_counter()
        os.pwrite(fd, buf, 256 + i * (BS + 40))
        os.fdatasync(fd)
        lat.append(time.perf_counter() - s)
    t = time.perf_counter() - t0
    os.close(fd); lat.sort()
    return N / t, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * .99)] * 1e6
for r in range(ROUNDS):
    for mode in MODES:
        p = os.path.join(D, f'falloc-{mode}.dat')
        prep(p, mode); time.sleep(3)  # let the preparation's write-back drain
        ops, p50, p99 = run(p)
        print(f'round {r} {mode:6s} {ops:8.0f}/s p50 {p50:6.0f} us p99 {p99:6.0f} us', flush=True)
        os.unlink(p)
