#!/usr/bin/python3
"""adafocus serve driven over HTTP on loopback (port 0), as clients would: answers against `predict --json`, every
refusal with its status, overload, draining on SIGTERM, Prometheus text, live streams. Every request and wait is
bounded in time.

usage: test_serve.py ADAFOCUS_BINARY REFERENCE_DIR
"""
import concurrent.futures
import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cli as cli  # noqa: E402  the binary, run(), the tiny presets (module attributes: its tests are not run)

KEY = "s3cret-key"


class Server:
    """`adafocus serve --port 0 ARGS` until stop(); request() speaks HTTP/1.1 to it."""

    def __init__(self, folder, *args, key=KEY):
        self.log = open(os.path.join(folder, f"serve_{time.monotonic_ns()}.log"), "w+")
        self.key = key
        self.proc = subprocess.Popen([cli.BINARY, "--threads", "2", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # printed once it listens, or the process has ended
        m = re.match(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.wait(timeout=30)
            self.log.seek(0)
            raise AssertionError(f"the server did not start: {line!r} {self.log.read()}")
        self.port = int(m.group(1))
        deadline = time.monotonic() + 120
        while self.request("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready after 120 s"
            time.sleep(0.1)

    def request(self, method, path, body=None, headers=None, timeout=60, key=True):
        headers = dict(headers or {})
        if key and self.key:
            headers.setdefault("Authorization", "Bearer " + self.key)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def predict(self, video, query="", **kw):
        with open(video, "rb") as f:
            status, headers, body = self.request("POST", "/v1/predict" + query, f.read(),
                                                 {"Content-Type": "video/mp4"}, **kw)
        return status, headers, json.loads(body)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=90)
        self.proc.stdout.close()
        self.log.close()
        return code


def parse_prometheus(text):
    """Samples {(name, labels): value} of the text exposition format, checking every line's syntax."""
    samples, types = {}, {}
    label = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:' + label + r')(?:,' + label + r')*\})? (\S+)$')
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        m = sample.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"{name} has no TYPE line"
        samples[(name, labels)] = float(value)
    return samples, types


class Serve(unittest.TestCase):
    """One tiny AdaFocusV3 (trained and calibrated here) served with every limit set low enough to reach."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = cls.tmp.name
        cls.data = os.path.join(d, "data")
        assert cli.run("make-synthetic", "--out", cls.data, "--train", "16", "--val", "6", "--calib", "12",
                       "--frames", "8", "--size", "64", "--seed", "7").returncode == 0
        preset = os.path.join(d, "tiny_v3.yaml")
        with open(preset, "w") as f:
            f.write(cli.TINY_V3)
        r = cli.run("train", "-c", preset, "--data", cls.data, "--out", os.path.join(d, "run"),
                    "train.eval_every=0", "train.eval_last=0")
        assert r.returncode == 0, r.stderr
        cls.model = os.path.join(d, "run", "last.pt")
        exits = json.loads(cli.run("flops", "-c", preset, "model.num_classes=10", "--json").stdout)["exits"]
        cls.budgets = [(exits[1] + exits[2]) / 2, (exits[2] + exits[4]) / 2]
        r = cli.run("calibrate", "--checkpoint", cls.model, "--list", "calib.txt", "--budgets",
                    ",".join(map(str, cls.budgets)), "--out", os.path.join(d, "exits.json"), "--embed")
        assert r.returncode == 0, r.stderr
        cls.videos = [os.path.join(cls.data, "videos", f"val_{i:05d}.mp4") for i in range(6)]
        # Videos beyond the limits the server is given: longer than --max-frames, larger than --max-pixels.
        for name, args in [("long", ["--frames", "300", "--size", "64"]), ("large", ["--frames", "4", "--size", "512"])]:
            assert cli.run("make-synthetic", "--out", os.path.join(d, name), "--train", "1", "--val", "1",
                           *args).returncode == 0
        cls.long_video = os.path.join(d, "long", "videos", "val_00000.mp4")
        cls.large_video = os.path.join(d, "large", "videos", "val_00000.mp4")
        cls.key_file = os.path.join(d, "key")
        with open(cls.key_file, "w") as f:
            f.write(KEY + "\n")
        cls.server = Server(d, "--checkpoint", cls.model, "--media-root", d, "--api-key-file", cls.key_file,
                            "--max-upload-mb", "1", "--max-frames", "200", "--max-pixels", "100000",
                            "--read-timeout-s", "2", "--max-batch", "4", "--max-delay-ms", "5")

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0
        cls.tmp.cleanup()

    def model_info(self):
        status, _, body = self.server.request("GET", "/v1/model")
        self.assertEqual(status, 200)
        return json.loads(body)

    def test_health_and_the_model_with_its_calibrated_budgets(self):
        self.assertEqual(self.server.request("GET", "/healthz", key=False)[0], 200)
        self.assertEqual(self.server.request("GET", "/readyz", key=False)[0], 200)
        m = self.model_info()
        self.assertEqual(m["method"], "adafocus_v3")
        self.assertEqual(len(m["classes"]), 10)
        self.assertEqual(len(m["exit_gflops"]), m["exits"])
        self.assertEqual(m["criterion"], "entropy")
        costs = [b["gflops"] for b in m["budgets"]]
        self.assertEqual(costs, sorted(costs))
        self.assertAlmostEqual(costs[0], m["exit_gflops"][0], delta=1e-12)  # everyone at the first exit
        self.assertLessEqual(costs[-1], m["full_gflops"] * (1 + 1e-9))
        self.assertEqual(m["min_budget"], costs[0])
        self.assertEqual(m["default_budget"], costs[-1])

    def test_answers_equal_predict_json_with_many_clients_at_once(self):
        budgets = [*self.budgets, None]  # None: the server's default, the most accurate level
        top = self.model_info()["default_budget"]
        expected = {}
        for v in self.videos:
            for b in budgets:
                r = cli.run("predict", "--checkpoint", self.model, v, "--budget", str(top if b is None else b),
                            "--json", "--top-k", "3")
                self.assertEqual(r.returncode, 0, r.stderr)
                expected[(v, b)] = json.loads(r.stdout)
        jobs = [(v, b) for v in self.videos for b in budgets] * 3

        def ask(job):
            v, b = job
            return job, self.server.predict(v, "?top_k=3" + ("" if b is None else f"&budget={b!r}"))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, jobs))
        for (v, b), (status, _, got) in answers:
            self.assertEqual(status, 200, got)
            want = expected[(v, b)]
            self.assertEqual(got["exit"], want["exit"], (v, b))
            self.assertAlmostEqual(got["gflops"], want["gflops"], delta=1e-12)
            self.assertAlmostEqual(got["budget_used"], want["expected_gflops"], delta=1e-12)
            self.assertEqual(got["frames"], want["frames"])
            self.assertEqual([t["label"] for t in got["top"]], [t["label"] for t in want["top"]])
            for g, w in zip(got["top"], want["top"]):
                self.assertAlmostEqual(g["score"], w["score"], delta=1e-5)  # batched with other videos
            self.assertEqual(len(got["regions"]), len(want["regions"]))
            self.assertFalse(got["degraded"])
            for stage in ("queue_ms", "decode_ms", "network_ms"):
                self.assertGreaterEqual(got[stage], 0)
        # The same as a multipart form, the fields in the form.
        v, b = self.videos[0], self.budgets[0]
        boundary = "xYzBoUnDaRy"
        with open(v, "rb") as f:
            video = f.read()
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"budget\"\r\n\r\n{b!r}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + video + f"\r\n--{boundary}--\r\n".encode()
        status, _, body = self.server.request("POST", "/v1/predict", form,
                                              {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.assertEqual(status, 200, body)
        got = json.loads(body)
        self.assertEqual(got["video"], "a.mp4")
        self.assertEqual([t["label"] for t in got["top"]], [t["label"] for t in expected[(v, b)]["top"]])
        self.assertEqual(got["exit"], expected[(v, b)]["exit"])

    def assert_refused(self, status, body, code, *words):
        self.assertEqual(status, code, body)
        reason = json.loads(body)["error"]
        for w in words:
            self.assertIn(w, reason)
        # ... and the server still answers a good request.
        ok, _, answer = self.server.predict(self.videos[0])
        self.assertEqual(ok, 200, answer)

    def test_bad_uploads_are_refused_with_a_reason(self):
        with open(self.videos[1], "rb") as f:
            video = f.read()
        post = lambda body, query="", ctype="video/mp4", **kw: self.server.request(  # noqa: E731
            "POST", "/v1/predict" + query, body, {"Content-Type": ctype}, **kw)
        self.assert_refused(*post(b"")[::2], 400, "empty")
        self.assert_refused(*post(video[:len(video) // 2])[::2], 400, "decode")
        self.assert_refused(*post(b"just some text\n" * 100, ctype="text/plain")[::2], 400, "not a video")
        self.assert_refused(*post(b"just some text\n" * 100)[::2], 400, "decode")
        self.assert_refused(*post(os.urandom(20000))[::2], 400, "decode")
        self.assert_refused(*post(b"--x\r\nbroken", ctype="multipart/form-data; boundary=x")[::2], 400, "multipart")
        with open(self.long_video, "rb") as f:
            self.assert_refused(*post(f.read())[::2], 422, "300 frames", "--max-frames")
        with open(self.large_video, "rb") as f:
            self.assert_refused(*post(f.read())[::2], 422, "512x512", "--max-pixels")
        self.assert_refused(*post(video, "?colour=red")[::2], 400, "unknown field 'colour'")
        self.assert_refused(*post(video, "?budget=lots")[::2], 400, "'budget' must be a number")
        self.assert_refused(*post(video, "?budget=1e-9")[::2], 400, "below the cheapest budget")
        self.assert_refused(*post(video, "?degrade=maybe")[::2], 400, "degrade")
        self.assert_refused(*post(video, key=False)[::2], 401, "API key")
        self.assert_refused(*self.server.request("POST", "/v1/predict", video,
                                                 {"Content-Type": "video/mp4", "X-API-Key": "wrong"}, key=False)[::2],
                            401, "API key")
        self.assert_refused(*self.server.request("GET", "/v1/predict")[::2], 405, "POST")
        self.assert_refused(*self.server.request("GET", "/nowhere")[::2], 404, "/nowhere")
        # A reason quoting bytes that are not UTF-8 (found by the fuzz target: the JSON writer threw, and the server
        # died): replaced, the answer still JSON.
        self.assert_refused(*self.server.request("GET", "/where%ff")[::2], 404, "/where\ufffd")
        self.assert_refused(*post(video, "?top_k=1e300")[::2], 400, "top_k")

    def test_an_upload_over_the_limit_is_refused_before_its_body_is_sent(self):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                      b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 50000000\r\n\r\n")
            answer = s.recv(65536).decode()  # the 50 MB never sent
        self.assertTrue(answer.startswith("HTTP/1.1 413"), answer)
        self.assertIn("--max-upload-mb", answer)
        status, _, answer = self.server.predict(self.videos[0])
        self.assertEqual(status, 200, answer)

    def test_slow_clients_hold_no_thread_and_are_cut_off(self):
        slow = []
        for _ in range(40):  # slow-loris: headers trickling in, never finished
            s = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        start = time.monotonic()
        status, _, answer = self.server.predict(self.videos[2], timeout=10)
        self.assertEqual(status, 200, answer)
        self.assertLess(time.monotonic() - start, 5)
        for s in slow:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
        # The read timeout (2 s) covers the whole request: each connection is closed by the server.
        for s in slow:
            s.settimeout(max(0.1, start + 8 - time.monotonic()))
            try:
                self.assertEqual(s.recv(100), b"")
            except ConnectionResetError:
                pass
            s.close()
        self.assertLess(time.monotonic() - start, 8)

    def test_stream_sources_must_lie_under_the_media_root(self):
        post = lambda spec: self.server.request("POST", "/v1/streams", json.dumps(spec))  # noqa: E731
        self.assert_refused(*post({"source": "../secret.mp4"})[::2], 403, "..")
        self.assert_refused(*post({"source": "/etc/passwd"})[::2], 403, "media-root")
        link = os.path.join(self.dir, "outside.mp4")
        os.symlink("/etc/hostname", link)  # a link inside pointing out
        try:
            self.assert_refused(*post({"source": "outside.mp4"})[::2], 403, "media-root")
        finally:
            os.unlink(link)
        self.assert_refused(*post({"source": "ftp://127.0.0.1/x.mp4"})[::2], 400, "ftp")
        good = "data/videos/val_00000.mp4"
        self.assert_refused(*post({"source": good, "windows": 4})[::2], 400, "unknown field 'windows'")
        self.assert_refused(*post({"source": good, "window": 0})[::2], 400, "'window'")
        self.assert_refused(*post({"source": good, "budget": 1e-9})[::2], 400, "below the cheapest budget")
        self.assert_refused(*post({"source": "data/videos/nope.mp4"})[::2], 400, "nope.mp4")
        self.assert_refused(*self.server.request("POST", "/v1/streams", b"{not json")[::2], 400, "JSON")

    def events(self, stream_id, until, timeout=60):
        """The JSON lines of a stream's events until one has "event" in `until` (bounded in time)."""
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=timeout)
        c.request("GET", f"/v1/streams/{stream_id}/events", headers={"Authorization": "Bearer " + KEY})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "application/x-ndjson")
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = r.readline()
            if not line:
                break
            if line.strip():
                out.append(json.loads(line))
                if out[-1]["event"] in until:
                    break
        c.close()
        return out

    def start_stream(self, spec):
        status, _, body = self.server.request("POST", "/v1/streams", json.dumps(spec))
        self.assertEqual(status, 201, body)
        return json.loads(body)["id"]

    def test_a_stream_over_a_video_yields_its_windows_as_predict_stream_does(self):
        source = os.path.join(self.data, "videos", "val_00003.mp4")  # 8 frames at 8 fps, played in real time
        budget = self.budgets[1]
        stream_id = self.start_stream({"source": "data/videos/val_00003.mp4", "window": 4, "stride": 2, "budget": budget,
                                       "top_k": 2})
        got = self.events(stream_id, {"end", "failed", "stopped"})
        self.assertEqual(got[-1]["event"], "end", got)
        windows = [e for e in got if e["event"] == "window"]
        self.assertEqual([(w["first_frame"], w["last_frame"]) for w in windows], [(0, 3), (2, 5), (4, 7)])
        for w in windows:
            self.assertAlmostEqual(w["start"], w["first_frame"] / 8, delta=1e-6)
            self.assertAlmostEqual(w["end"], w["last_frame"] / 8, delta=1e-6)
        r = cli.run("predict", "--checkpoint", self.model, "--stream", source, "--window", "4", "--stride", "2",
                    "--budget", str(budget), "--top-k", "2", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        want = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(want), 3)
        for g, w in zip(windows, want):
            for key in ("window", "first_frame", "last_frame", "exit", "gflops", "budget_used"):
                self.assertAlmostEqual(g[key], w[key], delta=1e-9, msg=key)
            self.assertEqual([t["label"] for t in g["top"]], [t["label"] for t in w["top"]])
        # Listed while known; DELETE stops a running one.
        status, _, body = self.server.request("GET", "/v1/streams")
        self.assertIn(stream_id, [s["id"] for s in json.loads(body)["streams"]])
        long_id = self.start_stream({"source": "long/videos/val_00000.mp4", "window": 4, "stride": 4})  # 37 s
        self.assertEqual(self.server.request("DELETE", f"/v1/streams/{long_id}")[0], 200)
        self.assertEqual(self.events(long_id, {"end", "stopped", "failed"}, timeout=10)[-1]["event"], "stopped")
        self.assertEqual(self.server.request("DELETE", "/v1/streams/nope")[0], 404)

    def test_a_network_source_that_drops_is_retried_with_backoff(self):
        with open(self.videos[4], "rb") as f:
            video = f.read()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(video)))
                self.end_headers()
                self.wfile.write(video)

            def log_message(self, *args):
                pass

        source = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=source.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{source.server_address[1]}/live.mp4"
        stream_id = self.start_stream({"source": url, "window": 4, "stride": 4})
        # An HTTP source is live: when it ends it is opened again.
        got = self.events(stream_id, {"reconnected", "failed", "end"}, timeout=30)
        self.assertEqual(got[-1]["event"], "reconnected", got)
        self.assertTrue(any(e["event"] == "window" for e in got), got)
        source.shutdown()
        source.server_close()
        got = self.events(stream_id, {"failed", "end"}, timeout=6)  # from the start: the whole story so far
        tries = [e for e in got if e["event"] == "reconnecting"]
        self.assertGreaterEqual(len(tries), 2, got)
        waits = [e["in_s"] for e in tries[-2:]]
        self.assertGreater(waits[1], waits[0])  # a growing pause
        self.assertEqual(self.server.request("DELETE", f"/v1/streams/{stream_id}")[0], 200)

    def test_metrics_are_prometheus_text(self):
        self.server.predict(self.videos[0])
        self.server.request("POST", "/v1/predict", b"", {"Content-Type": "video/mp4"})
        status, headers, body = self.server.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"))
        samples, types = parse_prometheus(body.decode())
        self.assertEqual(types["adafocus_request_seconds"], "histogram")
        self.assertEqual(types["adafocus_requests_total"], "counter")
        self.assertGreaterEqual(samples[("adafocus_requests_total", '{endpoint="/v1/predict",status="200"}')], 1)
        self.assertGreaterEqual(samples[("adafocus_requests_total", '{endpoint="/v1/predict",status="400"}')], 1)
        for name, labels in [("adafocus_request_seconds", '{endpoint="/v1/predict"'),
                             ("adafocus_stage_seconds", '{stage="network"'), ("adafocus_batch_size", "")]:
            buckets = [(k[1], v) for k, v in samples.items() if k[0] == name + "_bucket" and k[1].startswith(labels)]
            counts = [v for _, v in buckets]
            self.assertEqual(counts, sorted(counts), name)  # cumulative
            self.assertTrue(buckets[-1][0].endswith('le="+Inf"}'), buckets)
            count = [v for k, v in samples.items() if k[0] == name + "_count" and k[1].startswith(labels)]
            self.assertEqual(counts[-1], count[0])
        self.assertIn(("adafocus_budget_gflops", ""), samples)
        self.assertIn(("adafocus_queue_depth", ""), samples)
        self.assertGreater(samples[("adafocus_gflops_total", "")], 0)
        self.assertEqual(self.server.request("GET", "/metrics", key=False)[0], 401)


class Overload(unittest.TestCase):
    """Servers pushed past what they can answer: they refuse (503, Retry-After) rather than hang or grow, and drain
    on SIGTERM."""

    @classmethod
    def setUpClass(cls):
        Serve.setUpClass.__func__(cls)  # the same tiny model (its own folder and server)

    @classmethod
    def tearDownClass(cls):
        Serve.tearDownClass.__func__(cls)

    def burst(self, server, clients, query=""):
        with open(self.videos[0], "rb") as f:
            video = f.read()
        barrier = threading.Barrier(clients)

        def one(_):
            barrier.wait(timeout=30)
            status, headers, body = server.request("POST", "/v1/predict" + query, video,
                                                   {"Content-Type": "video/mp4"}, timeout=60)
            return status, headers, json.loads(body)

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            return list(pool.map(one, range(clients)))

    def test_a_full_queue_sheds_with_503_and_memory_stays_bounded(self):
        server = Server(self.dir, "--checkpoint", self.model, "--queue", "4", "--max-batch", "2", key=None)
        try:
            rss = []
            for _ in range(4):
                answers = self.burst(server, 48)
                statuses = [a[0] for a in answers]
                self.assertTrue(set(statuses) <= {200, 503}, statuses)
                self.assertIn(200, statuses)
                self.assertIn(503, statuses)  # 48 at once, 4 admitted at most
                for status, headers, body in answers:
                    if status == 503:
                        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
                        self.assertIn("--queue", body["error"])
                rss.append(server.rss_kb())
            # Bursts alike after the first: memory does not grow with the requests refused.
            self.assertLess(max(rss[1:]), 1.1 * rss[1], rss)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_under_an_objective_requests_are_degraded_or_refused_never_late_at_full_budget(self):
        server = Server(self.dir, "--checkpoint", self.model, "--slo-ms", "30", "--max-batch", "2", key=None)
        try:
            levels = [b["gflops"] for b in json.loads(server.request("GET", "/v1/model")[2])["budgets"]]
            degraded = refused = 0
            for _ in range(4):
                for status, headers, body in self.burst(server, 32, "?degrade=false"):
                    self.assertIn(status, (200, 503), body)
                    if status == 200:
                        self.assertFalse(body["degraded"])
                        self.assertEqual(body["budget_used"], levels[-1])
                    else:
                        refused += 1
                        self.assertIn("degrade=false", body["error"])
                        self.assertGreaterEqual(int(headers["Retry-After"]), 1)
                for status, headers, body in self.burst(server, 32):
                    if status == 200 and body["degraded"]:
                        degraded += 1
                        self.assertLess(body["budget_used"], body["budget"])
                        self.assertIn(body["budget_used"], levels)
            self.assertGreater(refused, 0)
            self.assertGreater(degraded, 0)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_sigterm_answers_what_was_admitted_then_exits_0(self):
        server = Server(self.dir, "--checkpoint", self.model, "--decode-threads", "1", key=None)
        # Twelve 300-frame videos at once take a while to decode one after the other: most are admitted and not
        # answered yet when SIGTERM comes.
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            waiting = [pool.submit(lambda: (server.predict(self.long_video), time.monotonic())) for _ in range(12)]
            time.sleep(0.2)
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            answers = [w.result(timeout=60) for w in waiting]
        self.assertEqual([a[0][0] for a in answers], [200] * 12)
        self.assertTrue(any(at > signalled for _, at in answers), "none was in flight: the test shows nothing")
        self.assertEqual(server.proc.wait(timeout=60), 0)
        with self.assertRaises(OSError):
            server.request("GET", "/healthz", timeout=5)
        server.stop()


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
