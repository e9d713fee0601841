#!/usr/bin/python3
"""Load benchmark of `adafocus serve` on loopback (docs/serving.md): closed-loop concurrency, open-loop overload with
the load-adaptive budget and with the budget fixed, and a soak of good and bad uploads and streams.

The client is ours (Python threads, one keep-alive connection each); it shares the machine's cores with the server,
and the figures include that. Every run is bounded in requests and time; servers bind 127.0.0.1 only.

usage: bench/serve_load.py --binary build/adafocus --demo DEMO --videos VIDEOS --out OUT [--parts closed,open,soak]
  DEMO    an `adafocus demo` folder: adafocus_v3.pt, adafocus_v2.pt (calibrated), full_frame_full_res.pt
  VIDEOS  the demo's val videos as H.264: adafocus make-synthetic --out VIDEOS --train 1 --val 500 --seed 0
          (the demo's generator and seed: the same videos as its JPEG frames, val.txt beside them)
Writes OUT/serve_load.json, OUT/open_loop.svg and OUT/soak.svg, and prints the tables of docs/serving.md.
"""
import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import threading
import time

Video = collections.namedtuple("Video", "name data label")


class Server:
    """`adafocus serve --port 0 ARGS` until stop()."""

    def __init__(self, binary, checkpoint, *args, log=None):
        self.log = open(log or os.devnull, "w")
        self.proc = subprocess.Popen([binary, "--threads", "2", "serve", "--checkpoint", checkpoint, "--port", "0",
                                      *args], stdout=subprocess.PIPE, stderr=self.log, text=True)
        m = re.match(r"listening on http://127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
        if not m:
            raise SystemExit(f"the server did not start (see {log})")
        self.port = int(m.group(1))
        deadline = time.monotonic() + 300
        while get(self.port, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the server was not ready after 300 s")
            time.sleep(0.2)
        self.model = json.loads(get(self.port, "/v1/model")[1])

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.proc.stdout.close()
        self.log.close()
        return code


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        c.close()


class Client:
    """One keep-alive connection (reopened after an error)."""

    def __init__(self, port):
        self.port, self.conn = port, None

    def post(self, path, body, content_type="video/mp4", timeout=120):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                self.conn.request("POST", path, body, {"Content-Type": content_type})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                try:
                    answer = json.loads(data)
                except ValueError:
                    answer = {}
                return r.status, dict(r.getheaders()), answer
            except (OSError, http.client.HTTPException):
                if self.conn:
                    self.conn.close()
                self.conn = None
                if attempt:
                    return 0, {}, {}


def load_videos(folder):
    with open(os.path.join(folder, "classInd.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    videos = []
    with open(os.path.join(folder, "val.txt")) as f:
        for line in f:
            path, label = line.split()
            with open(os.path.join(folder, path), "rb") as v:
                videos.append(Video(path, v.read(), classes[int(label)]))
    return videos


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(records, seconds):
    ok = [r for r in records if r["status"] == 200]
    lat = [r["latency"] for r in ok]
    return {"requests": len(records), "seconds": seconds, "answered_per_s": len(ok) / seconds,
            "ok_share": len(ok) / max(1, len(records)),
            "statuses": dict(collections.Counter(r["status"] for r in records)),
            "p50_ms": 1e3 * percentile(lat, 50), "p95_ms": 1e3 * percentile(lat, 95),
            "p99_ms": 1e3 * percentile(lat, 99),
            "top1": 100 * sum(r["correct"] for r in ok) / max(1, len(ok)),
            "gflops": statistics.fmean(r["gflops"] for r in ok) if ok else float("nan"),
            "budget_used": statistics.fmean(r["budget_used"] for r in ok) if ok else float("nan"),
            "promised_top1": statistics.fmean(r["promised"] for r in ok if r["promised"] is not None)
            if any(r["promised"] is not None for r in ok) else None,
            "degraded_share": sum(r["degraded"] for r in ok) / max(1, len(ok)),
            "decode_ms": statistics.fmean(r["decode_ms"] for r in ok) if ok else float("nan"),
            "network_ms": statistics.fmean(r["network_ms"] for r in ok) if ok else float("nan"),
            "queue_ms": statistics.fmean(r["queue_ms"] for r in ok) if ok else float("nan")}


def record(server, video, status, headers, answer, latency, at=0.0):
    top1 = {round(b["gflops"], 12): b["top1"] for b in server.model["budgets"]}
    ok = status == 200
    return {"at": at, "status": status, "latency": latency,
            "correct": ok and answer["top"][0]["label"] == video.label,
            "gflops": answer.get("gflops", 0.0), "budget_used": answer.get("budget_used", 0.0),
            "promised": top1.get(round(answer.get("budget_used", -1), 12)) if ok else None,
            "degraded": bool(answer.get("degraded")), "decode_ms": answer.get("decode_ms", 0.0),
            "network_ms": answer.get("network_ms", 0.0), "queue_ms": answer.get("queue_ms", 0.0),
            "retry_after": headers.get("Retry-After")}


def closed_loop(server, videos, concurrency, query=""):
    """Every video once, `concurrency` clients each sending its next as soon as its last is answered."""
    lock, next_index, records = threading.Lock(), [0], []

    def client():
        c = Client(server.port)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(videos):
                return
            start = time.perf_counter()
            status, headers, answer = c.post("/v1/predict" + query, videos[i].data)
            r = record(server, videos[i], status, headers, answer, time.perf_counter() - start)
            with lock:
                records.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(records, time.perf_counter() - start)


def open_loop(server, videos, rate, seconds, query="", seed=0):
    """Poisson arrivals at `rate` per second for `seconds`; latency counted from each request's scheduled arrival
    (a late client does not hide a slow server)."""
    rng, arrivals, t = random.Random(seed), [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        arrivals.append(t)
    records = [None] * len(arrivals)
    local = threading.local()
    start = time.perf_counter() + 0.5

    def one(k):
        if not hasattr(local, "client"):
            local.client = Client(server.port)
        delay = start + arrivals[k] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        v = videos[k % len(videos)]
        status, headers, answer = local.client.post("/v1/predict" + query, v.data)
        records[k] = record(server, v, status, headers, answer, time.perf_counter() - start - arrivals[k],
                            arrivals[k])

    with concurrent.futures.ThreadPoolExecutor(192) as pool:
        list(pool.map(one, range(len(arrivals))))
    return records


def per_second(records, seconds, slo):
    """Each second of arrivals: p95 latency of its answers, share answered 200, mean budget used."""
    bins = []
    for s in range(int(seconds)):
        rs = [r for r in records if s <= r["at"] < s + 1]
        ok = [r for r in rs if r["status"] == 200]
        bins.append({"t": s, "p95_ms": 1e3 * percentile([r["latency"] for r in ok], 95) if ok else None,
                     "ok_share": len(ok) / len(rs) if rs else None,
                     "budget": statistics.fmean(r["budget_used"] for r in ok) if ok else None,
                     "over_slo": sum(r["latency"] > slo / 1e3 for r in ok)})
    return bins


def svg_lines(panels, width=900, panel_height=220, title=""):
    """Stacked panels of lines over time: panels = [(y label, [(name, colour, [(x, y)]), ...], y_max, hline)]."""
    left, right, top, gap = 70, 170, 40, 50
    height = top + len(panels) * (panel_height + gap)
    x_max = max(x for _, series, _, _ in panels for _, _, pts in series for x, _ in pts) or 1
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
           f"font-size='12'><rect width='100%' height='100%' fill='white'/>"
           f"<text x='{left}' y='22' font-size='15'>{title}</text>"]
    for p, (label, series, y_max, hline) in enumerate(panels):
        y0 = top + p * (panel_height + gap)
        px = lambda x: left + (width - left - right) * x / x_max  # noqa: E731
        py = lambda y: y0 + panel_height * (1 - min(y, y_max) / y_max)  # noqa: E731
        out.append(f"<rect x='{left}' y='{y0}' width='{width - left - right}' height='{panel_height}' fill='none' "
                   f"stroke='#888'/><text x='12' y='{y0 + panel_height / 2}' transform='rotate(-90 12 "
                   f"{y0 + panel_height / 2})' text-anchor='middle'>{label}</text>")
        for k in range(5):
            y = y_max * k / 4
            out.append(f"<text x='{left - 6}' y='{py(y) + 4}' text-anchor='end'>{y:.3g}</text>")
        for k in range(0, int(x_max) + 1, max(1, int(x_max) // 10)):
            out.append(f"<text x='{px(k)}' y='{y0 + panel_height + 16}' text-anchor='middle'>{k}</text>")
        if hline is not None:
            out.append(f"<line x1='{left}' x2='{width - right}' y1='{py(hline[1])}' y2='{py(hline[1])}' "
                       f"stroke='#c00' stroke-dasharray='6 4'/><text x='{width - right + 6}' y='{py(hline[1]) + 4}' "
                       f"fill='#c00'>{hline[0]}</text>")
        for i, (name, colour, pts) in enumerate(series):
            segments, current = [], []
            for x, y in pts:  # a gap where a second had no answer
                if y is None:
                    if current:
                        segments.append(current)
                    current = []
                else:
                    current.append(f"{px(x):.1f},{py(y):.1f}")
            if current:
                segments.append(current)
            for seg in segments:
                out.append(f"<polyline points='{' '.join(seg)}' fill='none' stroke='{colour}' stroke-width='2'/>")
            out.append(f"<line x1='{width - right + 10}' x2='{width - right + 30}' y1='{y0 + 14 + 18 * i}' "
                       f"y2='{y0 + 14 + 18 * i}' stroke='{colour}' stroke-width='2'/><text x='{width - right + 34}' "
                       f"y='{y0 + 18 + 18 * i}'>{name}</text>")
    out.append(f"<text x='{(width - right + left) / 2}' y='{height - 8}' text-anchor='middle'>seconds</text></svg>")
    return "\n".join(out)


def run_closed(args, videos, results):
    rows = {}
    for method, extra in [("adafocus_v3", []), ("adafocus_v2", []), ("full_frame_full_res", [])]:
        server = Server(args.binary, os.path.join(args.demo, method + ".pt"), "--max-batch", str(args.max_batch),
                        *extra, log=os.path.join(args.out, f"serve_{method}.log"))
        closed_loop(server, videos[:64], 8)  # warm-up
        rows[method] = {"gflops_full": server.model["full_gflops"], "levels": server.model["budgets"],
                        "by_concurrency": {}}
        for c in args.concurrency:
            rows[method]["by_concurrency"][c] = closed_loop(server, videos, c)
            print(method, c, json.dumps(rows[method]["by_concurrency"][c]), flush=True)
        # Lower budgets at concurrency 16: what each calibrated level buys on the served videos.
        if len(server.model["budgets"]) > 1:
            rows[method]["by_budget"] = {}
            for level in server.model["budgets"][:: max(1, len(server.model["budgets"]) // 4)]:
                s = closed_loop(server, videos, 16, f"?budget={level['gflops']!r}")
                rows[method]["by_budget"][level["gflops"]] = s
                print(method, "budget", level["gflops"], json.dumps(s), flush=True)
        server.stop()
    results["closed"] = rows


def run_open(args, videos, results):
    ck = os.path.join(args.demo, "adafocus_v3.pt")
    sustained = closed_rate(results, "adafocus_v3", 16)
    if not sustained:
        server = Server(args.binary, ck, "--max-batch", str(args.max_batch))
        closed_loop(server, videos[:64], 8)
        sustained = closed_loop(server, videos, 16)["answered_per_s"]
        server.stop()
    runs = {}
    for factor in args.overload:
        rate = factor * sustained
        # The same server with the budget fixed: --min-budget at the top level, so that the load may not lower it;
        # over the SLO it can only shed.
        for name, extra in [("adaptive", []), ("fixed budget", ["--min-budget", repr(server_top(args, ck))])]:
            server = Server(args.binary, ck, "--max-batch", str(args.max_batch), "--slo-ms", str(args.slo_ms), *extra,
                            log=os.path.join(args.out, f"serve_open_{name.replace(' ', '_')}_{factor}.log"))
            closed_loop(server, videos[:64], 8)
            records = open_loop(server, videos, rate, args.open_seconds, seed=int(factor * 100))
            s = summary(records, args.open_seconds)
            s["rate"], s["factor"] = rate, factor
            s["timeline"] = per_second(records, args.open_seconds, args.slo_ms)
            s["within_slo_share"] = sum(r["status"] == 200 and r["latency"] <= args.slo_ms / 1e3
                                        for r in records) / len(records)
            runs[f"{name} x{factor}"] = s
            print(name, factor, json.dumps({k: v for k, v in s.items() if k != "timeline"}), flush=True)
            server.stop()
    results["open"] = {"sustained_full_budget_per_s": sustained, "slo_ms": args.slo_ms, "runs": runs}
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    series = list(runs.items())
    top = server_top(args, ck)
    panels = [("p95 latency (ms), per second of arrivals",
               [(n, colours[i % 6], [(b["t"], b["p95_ms"]) for b in s["timeline"]]) for i, (n, s) in enumerate(series)],
               max(4 * args.slo_ms, 1), ("SLO", args.slo_ms)),
              ("budget used (GFLOPs per video)",
               [(n, colours[i % 6], [(b["t"], b["budget"]) for b in s["timeline"]]) for i, (n, s) in enumerate(series)],
               top * 1.1, ("full", top)),
              ("share answered 200",
               [(n, colours[i % 6], [(b["t"], b["ok_share"]) for b in s["timeline"]]) for i, (n, s) in enumerate(series)],
               1.05, None)]
    with open(os.path.join(args.out, "open_loop.svg"), "w") as f:
        f.write(svg_lines(panels, title=f"AdaFocusV3 served under open-loop overload (x = arrival rate / what the "
                                        f"full budget sustains, {sustained:.0f}/s)"))


def closed_rate(results, method, concurrency):
    """Answers per second of a closed-loop run already in `results` (keys are strings once read back from JSON)."""
    runs = results.get("closed", {}).get(method, {}).get("by_concurrency", {})
    return (runs.get(concurrency) or runs.get(str(concurrency)) or {}).get("answered_per_s")


_top = {}


def server_top(args, ck):
    """The most accurate calibrated level of a checkpoint (GFLOPs)."""
    if ck not in _top:
        server = Server(args.binary, ck)
        _top[ck] = server.model["budgets"][-1]["gflops"]
        server.stop()
    return _top[ck]


def run_soak(args, videos, results):
    """Good uploads at half the sustained rate, a bad one every second, a stream every 20 s; RSS every 5 s."""
    ck = os.path.join(args.demo, "adafocus_v3.pt")
    media = os.path.dirname(os.path.join(args.videos, videos[0].name))
    server = Server(args.binary, ck, "--max-batch", str(args.max_batch), "--slo-ms", str(args.slo_ms),
                    "--media-root", media, "--max-upload-mb", "4", "--read-timeout-s", "2",
                    log=os.path.join(args.out, "serve_soak.log"))
    levels = [b["gflops"] for b in server.model["budgets"]]
    truncated = videos[0].data[: len(videos[0].data) // 3]
    bad = [("", b""), ("", truncated), ("", os.urandom(30000)), ("?budget=oops", videos[1].data),
           ("?colour=red", videos[1].data), ("?budget=1e-9", videos[1].data), ("text", b"hello\n" * 100)]
    stop, counts, rss, errors = threading.Event(), collections.Counter(), [], []
    rate = (closed_rate(results, "adafocus_v3", 16) or 100) / 2

    def good(seed):
        c, rng, k = Client(server.port), random.Random(seed), seed
        next_at = time.perf_counter()
        while not stop.is_set():
            next_at += rng.expovariate(rate / 4)
            time.sleep(max(0.0, next_at - time.perf_counter()))
            v = videos[k % len(videos)]
            k += 1
            status, _, answer = c.post(f"/v1/predict?budget={rng.choice(levels)!r}", v.data)
            counts[f"good {status}"] += 1
            if status not in (200, 503):
                errors.append(("good", status, answer))

    def bad_uploads():
        c, k = Client(server.port), 0
        while not stop.wait(1.0):
            query, body = bad[k % len(bad)]
            k += 1
            status, _, answer = c.post("/v1/predict" + (query if query != "text" else ""), body,
                                       "text/plain" if query == "text" else "video/mp4")
            counts[f"bad {status}"] += 1
            if status != 400 or "error" not in answer:
                errors.append(("bad", query, status, answer))
            # Over the upload limit, refused on its headers.
            status, _, answer = c.post("/v1/predict", b"\0" * (5 << 20))
            counts[f"too large {status}"] += 1
            if status != 413:
                errors.append(("too large", status, answer))

    def streams():
        k = 0
        while not stop.is_set():
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            c.request("POST", "/v1/streams", json.dumps({"source": os.path.basename(videos[k % len(videos)].name),
                                                          "window": 16, "stride": 8}))
            r = c.getresponse()
            body = json.loads(r.read())
            counts[f"stream start {r.status}"] += 1
            k += 1
            if r.status == 201:
                c.request("GET", f"/v1/streams/{body['id']}/events")
                events = [json.loads(line) for line in c.getresponse().read().decode().splitlines() if line.strip()]
                counts["stream windows"] += sum(e["event"] == "window" for e in events)
                if events[-1]["event"] != "end":
                    errors.append(("stream", events[-1]))
            c.close()
            stop.wait(20)

    threads = [threading.Thread(target=good, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=bad_uploads), threading.Thread(target=streams)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - start < args.soak_seconds:
        rss.append((time.monotonic() - start, server.rss_mb()))
        if server.proc.poll() is not None:
            errors.append(("server exited", server.proc.returncode))
            break
        time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    alive = server.proc.poll() is None
    code = server.stop() if alive else server.proc.returncode
    after_warmup = [m for t, m in rss if t >= 60] or [m for _, m in rss]
    results["soak"] = {"seconds": args.soak_seconds, "counts": dict(counts), "errors": errors[:20],
                       "alive_to_the_end": alive, "exit_code": code, "rss_mb": rss,
                       "rss_growth_after_first_minute": max(after_warmup) / after_warmup[0] - 1}
    print("soak", json.dumps({k: v for k, v in results["soak"].items() if k != "rss_mb"}), flush=True)
    with open(os.path.join(args.out, "soak.svg"), "w") as f:
        f.write(svg_lines([("resident memory (MB)", [("adafocus serve", "#1f77b4", rss)],
                            max(m for _, m in rss) * 1.3, ("+10%", after_warmup[0] * 1.1))],
                          title=f"{args.soak_seconds / 60:.0f}-minute soak: good and bad uploads, streams"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True)
    p.add_argument("--demo", required=True)
    p.add_argument("--videos", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default="closed,open,soak")
    p.add_argument("--concurrency", default="1,4,16,32")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--slo-ms", type=float, default=500)
    p.add_argument("--overload", default="2", help="open-loop arrival rates, as multiples of what the full budget "
                                                   "sustains (closed loop, concurrency 16)")
    p.add_argument("--open-seconds", type=float, default=60)
    p.add_argument("--soak-seconds", type=float, default=600)
    p.add_argument("--videos-limit", type=int, default=0, help="> 0: only the first N videos (a quick look)")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.overload = [float(x) for x in args.overload.split(",")]
    os.makedirs(args.out, exist_ok=True)
    videos = load_videos(args.videos)
    if args.videos_limit:
        videos = videos[: args.videos_limit]
    path = os.path.join(args.out, "serve_load.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results["cpu"] = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name")), "?")
    results["cores"] = os.cpu_count()
    for part, run in [("closed", run_closed), ("open", run_open), ("soak", run_soak)]:
        if part in args.parts.split(","):
            run(args, videos, results)
            with open(path + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
