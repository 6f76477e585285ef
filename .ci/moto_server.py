"""moto's S3 server, with object writes made atomic.

moto 5.2.1 checks a put's If-Match / If-None-Match and then stores the object without holding anything in
between (moto/s3/responses.py, `S3Response.put_object`; CompleteMultipartUpload likewise in
`_key_response_post`), and its server is threaded, so two concurrent create-if-absent puts can both
succeed. S3 never allows that, and Keel's fencing rests on it: `s3/tests/fencing.rs` races conditional puts
and failed against plain moto (2 winners of 6, 2026-11-27). Serializing moto's object writes makes it
behave as S3 does; reads stay concurrent.

Measured with `.ci/moto_race.py PORT 800` (6 racing create-if-absent puts per key) against servers run with
`sys.setswitchinterval(1e-6)` to make thread switches frequent, as on a loaded CI machine: plain moto gave
12 keys of 800 with two winners, this server none.

Usage: python3 .ci/moto_server.py -H HOST -p PORT (the arguments of `python3 -m moto.server`).
"""

import functools
import threading

from moto import server
from moto.s3.responses import S3Response

_writes = threading.RLock()


def _atomic(handler):
    @functools.wraps(handler)
    def serialized(*args, **kwargs):
        with _writes:
            return handler(*args, **kwargs)

    return serialized


S3Response.put_object = _atomic(S3Response.put_object)
S3Response._key_response_post = _atomic(S3Response._key_response_post)

if __name__ == "__main__":
    server.main()
