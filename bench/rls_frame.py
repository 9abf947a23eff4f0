#!/usr/bin/env python3
"""Helpers for bench/rls-bench. Plain python3, standard library only.

Sub-commands:
  encode OUT DOMAIN DESC [DESC ...] [--hits N]
      Write one gRPC frame (0x00, u32 big-endian length, message) holding an
      envoy.service.ratelimit.v3.RateLimitRequest. Each DESC is one
      RateLimitDescriptor written as comma-separated entries, e.g. "k1=a" or
      "k1=a,k2=b".
  decode-request FILE
      Decode a frame written by `encode` and print it (self-check).
  decode-response FILE
      Decode the gRPC response body (one frame of RateLimitResponse) and print
      the overall_code name (OK / OVER_LIMIT / UNKNOWN / EMPTY_BODY).
  grpc-status HEADERS_FILE
      Print the grpc-status found in a `curl -D` dump (headers + trailers),
      or "missing".
  h2load-stats SUMMARY LOGFILE
      Parse an h2load summary (stdout) and its --log-file; print one line:
      "rps p50_ms p99_ms total ok2xx non2xx failed".
  agg < LINES
      Read h2load-stats lines (one per round) and print
      "med_rps min_rps max_rps med_p50 med_p99 rounds total ok2xx non200 failed".
  prom-sum FILE METRIC [LABEL=VALUE ...]
      Sum the samples of a Prometheus counter in a /metrics dump whose labels
      include every LABEL=VALUE given (0 if none match).
  freeport
      Print a free TCP port on 127.0.0.1.

Protobuf wire format, hand-encoded (see rls.proto in envoy data-plane-api):
  RateLimitRequest      { 1: string domain; 2: repeated RateLimitDescriptor; 3: uint32 hits_addend }
  RateLimitDescriptor   { 1: repeated Entry }
  Entry                 { 1: string key; 2: string value }
  RateLimitResponse     { 1: Code overall_code; ... }   Code: 0 UNKNOWN, 1 OK, 2 OVER_LIMIT
"""

import socket
import struct
import sys

CODES = {0: "UNKNOWN", 1: "OK", 2: "OVER_LIMIT"}


# ---------------------------------------------------------------- encoding
def varint(n):
    if n < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire_type):
    return varint((field << 3) | wire_type)


def len_field(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def string_field(field, s):
    return len_field(field, s.encode("utf-8"))


def entry(k, v):
    return string_field(1, k) + string_field(2, v)


def descriptor(entries):
    return b"".join(len_field(1, entry(k, v)) for k, v in entries)


def request(domain, descriptors, hits):
    msg = string_field(1, domain)
    for d in descriptors:
        msg += len_field(2, descriptor(d))
    if hits:
        msg += key(3, 0) + varint(hits)
    return msg


def grpc_frame(msg):
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def parse_desc(text):
    entries = []
    for part in text.split(","):
        if "=" not in part:
            raise SystemExit(f"bad descriptor entry {part!r}, want key=value")
        k, v = part.split("=", 1)
        entries.append((k, v))
    return entries


# ---------------------------------------------------------------- decoding
def read_varint(buf, i):
    shift = 0
    n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def fields(buf):
    """Yield (field, wire_type, value) for a serialized message."""
    i = 0
    while i < len(buf):
        k, i = read_varint(buf, i)
        field, wt = k >> 3, k & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            ln, i = read_varint(buf, i)
            v = bytes(buf[i:i + ln])
            i += ln
        elif wt == 1:
            v = bytes(buf[i:i + 8])
            i += 8
        elif wt == 5:
            v = bytes(buf[i:i + 4])
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield field, wt, v


def unframe(data):
    if len(data) < 5:
        return None
    if data[0] != 0:
        raise SystemExit("compressed gRPC frame not supported")
    (ln,) = struct.unpack(">I", data[1:5])
    if len(data) != 5 + ln:
        raise SystemExit(f"frame length {ln} but {len(data) - 5} bytes follow")
    return data[5:]


def decode_request(data):
    msg = unframe(data)
    out = {"domain": "", "descriptors": [], "hits_addend": 0}
    for f, _, v in fields(msg):
        if f == 1:
            out["domain"] = v.decode()
        elif f == 2:
            entries = []
            for ef, _, ev in fields(v):
                if ef == 1:
                    kv = {1: "", 2: ""}
                    for kf, _, kvv in fields(ev):
                        kv[kf] = kvv.decode()
                    entries.append((kv[1], kv[2]))
            out["descriptors"].append(entries)
        elif f == 3:
            out["hits_addend"] = v
    return out


def decode_response(data):
    msg = unframe(data)
    if msg is None:
        return "EMPTY_BODY"
    code = 0
    for f, wt, v in fields(msg):
        if f == 1 and wt == 0:
            code = v
    return CODES.get(code, f"CODE_{code}")


# ---------------------------------------------------------------- h2load
def h2load_stats(summary_path, log_path):
    rps = None
    total = ok2xx = failed = None
    with open(summary_path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("finished in"):
                # finished in 1.23s, 162000.00 req/s, 10.00MB/s
                for part in line.split(","):
                    part = part.strip()
                    if part.endswith("req/s"):
                        rps = float(part.split()[0])
            elif line.startswith("requests:"):
                # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
                for part in line[len("requests:"):].split(","):
                    n, what = part.split()
                    if what == "total":
                        total = int(n)
                    elif what == "failed":
                        failed = int(n)
            elif line.startswith("status codes:"):
                for part in line[len("status codes:"):].split(","):
                    n, what = part.split()
                    if what == "2xx":
                        ok2xx = int(n)
    lat = []
    non200 = 0
    with open(log_path) as fh:
        for line in fh:
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            if cols[1] != "200":
                non200 += 1
            lat.append(int(cols[2]))
    if rps is None or total is None or not lat:
        raise SystemExit(f"could not parse h2load output {summary_path} / {log_path}")
    lat.sort()

    def pct(p):  # nearest-rank percentile, exact over all logged requests
        idx = max(0, -(-len(lat) * p // 100) - 1)
        return lat[int(idx)] / 1000.0

    logged_missing = total - len(lat)
    print(f"{rps:.0f} {pct(50):.3f} {pct(99):.3f} {total} {ok2xx or 0} "
          f"{non200 + logged_missing} {failed or 0}")


def agg(lines):
    rows = [line.split() for line in lines if line.strip()]
    if not rows:
        raise SystemExit("agg: no input")

    def median(col, fmt):
        vals = sorted(float(r[col]) for r in rows)
        n = len(vals)
        m = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
        return fmt.format(m)

    rps = [float(r[0]) for r in rows]
    sums = [sum(int(r[c]) for r in rows) for c in (3, 4, 5, 6)]
    print(median(0, "{:.0f}"), f"{min(rps):.0f}", f"{max(rps):.0f}",
          median(1, "{:.3f}"), median(2, "{:.3f}"), len(rows), *sums)


def prom_sum(path, metric, wanted):
    total = 0.0
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            if "{" in name_labels:
                name, _, rest = name_labels.partition("{")
                labels = {}
                for part in rest.rstrip("}").split(","):
                    if "=" in part:
                        k, v = part.split("=", 1)
                        labels[k.strip()] = v.strip().strip('"')
            else:
                name, labels = name_labels, {}
            if name != metric:
                continue
            if all(labels.get(k) == v for k, v in wanted):
                total += float(value)
    print(f"{total:.0f}")


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd = argv[1]
    if cmd == "encode":
        args = argv[2:]
        hits = 1
        if "--hits" in args:
            i = args.index("--hits")
            hits = int(args[i + 1])
            del args[i:i + 2]
        if len(args) < 2:
            raise SystemExit("encode OUT DOMAIN [DESC ...] [--hits N]")
        out, domain, descs = args[0], args[1], args[2:]
        frame = grpc_frame(request(domain, [parse_desc(d) for d in descs], hits))
        with open(out, "wb") as fh:
            fh.write(frame)
    elif cmd == "decode-request":
        with open(argv[2], "rb") as fh:
            print(decode_request(fh.read()))
    elif cmd == "decode-response":
        with open(argv[2], "rb") as fh:
            print(decode_response(fh.read()))
    elif cmd == "grpc-status":
        status = "missing"
        with open(argv[2], "rb") as fh:
            for line in fh.read().decode("latin-1").splitlines():
                if line.lower().startswith("grpc-status:"):
                    status = line.split(":", 1)[1].strip()
        print(status)
    elif cmd == "h2load-stats":
        h2load_stats(argv[2], argv[3])
    elif cmd == "agg":
        agg(sys.stdin.read().splitlines())
    elif cmd == "prom-sum":
        wanted = [a.split("=", 1) for a in argv[4:]]
        prom_sum(argv[2], argv[3], wanted)
    elif cmd == "freeport":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
