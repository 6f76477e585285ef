# Durable appends (pwrite + fdatasync, each write padded with zeros to the end of its page, as Keel's
# writer does) into 96 MiB files prepared four ways, the files alternating in rotating order, each round
# appending to a fresh region of each file:
#   big      zero-filled with 1 MiB writes (Keel's spares before 2026-11-27, fifth session), left cached:
#            the page cache holds it in 1 MiB folios
#   mid      zero-filled with 64 KiB writes (Keel's spares since): 64 KiB folios
#   small    zero-filled with 4 KiB writes: one page per folio
#   dropped  zero-filled with 1 MiB writes, fsynced, then POSIX_FADV_DONTNEED: the appends' own writes
#            create folios sized to them (tried in Keel and not kept: 64 writers x 16 KiB fell to 0.36-0.86
#            of the raw group commit)
# Prints appends/s per preparation and its ratio to `small`.
# Usage: python3 folios.py DIR WRITES_PER_ROUND RECORD_BYTES ROUNDS [PAD=1]
import os, statistics, sys, time

D = sys.argv[1]; N = int(sys.argv[2]); BS = int(sys.argv[3]); ROUNDS = int(sys.argv[4])
PAD = len(sys.argv) <= 5 or sys.argv[5] != '0'
SIZE = 96 << 20
PREP = {'big': (1 << 20, False), 'mid': (64 << 10, False), 'small': (4096, False), 'dropped': (1 << 20, True)}

def prepare(path, chunk_bytes, drop):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    chunk = bytes(chunk_bytes)
    for off in range(0, SIZE, chunk_bytes):
        os.pwrite(fd, chunk, off)
    os.fsync(fd)
    if drop:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

def appends(path, start):
    fd = os.open(path, os.O_RDWR)
    record = b'x' * BS
    off = start
    t = time.time()
    for _ in range(N):
        end = off + BS
        pad = (-end) % 4096 if PAD else 0
        os.pwrite(fd, record + bytes(pad), off)
        os.fdatasync(fd)
        off = end
    os.close(fd)
    return N / (time.time() - t)

if N * (BS + 64) * ROUNDS > SIZE:
    sys.exit('WRITES_PER_ROUND x (RECORD_BYTES + 64) x ROUNDS must fit in 96 MiB')
paths = {name: os.path.join(D, f'folios-{name}.dat') for name in PREP}
for name, (chunk, drop) in PREP.items():
    prepare(paths[name], chunk, drop)
time.sleep(5)
rates = {name: [] for name in PREP}
names = list(PREP)
for r in range(ROUNDS):
    for name in names[r % len(names):] + names[:r % len(names)]:
        rates[name].append(appends(paths[name], r * N * (BS + 64)))
base = statistics.mean(rates['small'])
print(f'{BS} B, padded={PAD}: ' + '  '.join(
    f'{n} {statistics.mean(v):.0f}/s ({statistics.mean(v) / base:.3f})' for n, v in rates.items()))
for p in paths.values():
    os.remove(p)
