#!/usr/bin/env python3
"""bench/run's report: table on stdout, OUT.json, OUT.dat + OUT.meta for plot.gp.

Reads from BENCH_TMP: scenarios.txt (the order), runs-<SCEN>.tsv (one line per
wrk or h2load run: target round output cpu-ticks hwm-kib [helper-cpu-ticks]),
s5.tsv and s9.tsv (target round ok errors rss_before rss_after seconds hwm),
versions.txt.
A run with non-2xx answers, socket errors or no result is flagged: it is
reported and counted, never part of a median.
"""
import json
import os
import statistics
import time

from benchutil import host_info, parse_run, read_versions  # bench/, this script's directory

TMP = os.environ["BENCH_TMP"]
OUT = os.environ["OUT"]
CLK = int(os.environ["CLK_TCK"])
PEERS = ("nginx", "haproxy")

TITLES = {
    "S1": "S1 GET / keep-alive TLS (proxy + headers)",
    "S2": "S2 GET /api/ with JWT + rate limit + CORS",
    "S3": "S3 full TLS handshake per request (Connection: close, no resumption)",
    "S4get": "S4 GET of a 1 MiB response",
    "S4post": "S4 POST of a 1 MiB body",
    "S5": "S5 memory per idle keep-alive TLS connection",
    "S6": "S6 flowgate workers = 2 vs workers = 1 (S1 load, wrk -t2)",
    "S7": "S7 HTTP/2 GET / keep-alive (h2load -c%s -m%s)" % (os.environ.get("H2_CLIENTS", "64"),
                                                          os.environ.get("H2_STREAMS", "10")),
    "S8": "S8 HTTP/2 new connection per request (h2load -c%s -n%s -m1, back to back)" % (
        os.environ.get("H2_CLIENTS", "64"), os.environ.get("H2_CLIENTS", "64")),
    "S9": "S9 memory per idle HTTP/2 connection",
}
SHORT = {"S1": "S1 GET /", "S2": "S2 JWT+RL+CORS", "S3": "S3 handshake",
         "S4get": "S4 1 MiB down", "S4post": "S4 1 MiB up", "S5": "S5 idle conn",
         "S7": "S7 h2 GET /", "S8": "S8 h2 new conn", "S9": "S9 idle h2 conn"}
IDLE = {"S5": ("s5.tsv", "IDLE_CONNS"), "S9": ("s9.tsv", "H2_IDLE_CONNS")}


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def f(v, fmt):
    return fmt % v if v is not None else "-"


def wrk_scenario(scen):
    order, runs = [], {}
    for line in open(os.path.join(TMP, "runs-%s.tsv" % scen)):
        cols = line.rstrip("\n").split("\t")
        target, rnd, path, ticks, hwm = cols[:5]
        helper = cols[5] if len(cols) > 5 and cols[5] else None
        r = parse_run(path)
        r["round"] = int(rnd)
        r["cpu_ticks"] = int(ticks) if ticks else None
        r["peak_rss_kib"] = int(hwm) if hwm else None
        n = r["requests"]
        r["cpu_us_per_req"] = r["cpu_ticks"] * 1e6 / CLK / n if r["cpu_ticks"] is not None and n else None
        r["redis_us_per_req"] = int(helper) * 1e6 / CLK / n if helper is not None and n else None
        r["flagged"] = (n is None or r["rps"] is None or r["non2xx"] > 0 or r["socket_errors"] > 0)
        if target not in runs:
            order.append(target)
            runs[target] = []
        runs[target].append(r)
    summary = {}
    for t in order:
        good = [r for r in runs[t] if not r["flagged"]]
        summary[t] = {
            "runs": len(runs[t]), "flagged_runs": len(runs[t]) - len(good),
            "rps": med(good, "rps"), "p50_ms": med(good, "p50_ms"), "p99_ms": med(good, "p99_ms"),
            "cpu_us_per_req": med(good, "cpu_us_per_req"),
            "redis_us_per_req": med(good, "redis_us_per_req"),
            "peak_rss_kib": max((r["peak_rss_kib"] or 0 for r in runs[t]), default=0) or None,
            "non2xx": sum(r["non2xx"] for r in runs[t]),
            "socket_errors": sum(r["socket_errors"] for r in runs[t]),
        }
    base = "flowgate-w1" if scen == "S6" else "flowgate"
    others = ["flowgate-w2"] if scen == "S6" else [p for p in PEERS if p in summary]
    ratios = {}
    for o in others:
        if base in summary and o in summary:
            a, b = summary[base], summary[o]
            if scen == "S6":   # how much the second worker brings
                a, b = b, a
            ratios["%s/%s" % ((o, base) if scen == "S6" else (base, o))] = {
                k: ratio(a[k], b[k]) for k in ("rps", "p99_ms", "cpu_us_per_req", "peak_rss_kib")}
    return {"kind": "wrk", "title": TITLES[scen], "order": order, "summary": summary,
            "ratios": ratios, "runs": runs}


def idle_scenario(scen):
    order, runs = [], {}
    fname, count_var = IDLE[scen]
    n = int(os.environ[count_var])
    for line in open(os.path.join(TMP, fname)):
        t, rnd, ok, err, before, after, secs, hwm = line.rstrip("\n").split("\t")
        ok, err, before, after = int(ok), int(err), int(before), int(after)
        r = {"round": int(rnd), "connections": ok, "errors": err, "rss_before_kib": before,
             "rss_after_kib": after, "open_seconds": float(secs),
             "peak_rss_kib": int(hwm) if hwm else None,
             "kib_per_conn": (after - before) / ok if ok else None}
        r["flagged"] = err > 0 or ok < n
        if t not in runs:
            order.append(t)
            runs[t] = []
        runs[t].append(r)
    summary = {}
    for t in order:
        good = [r for r in runs[t] if not r["flagged"]]
        summary[t] = {"runs": len(runs[t]), "flagged_runs": len(runs[t]) - len(good),
                      "kib_per_conn": med(good, "kib_per_conn"),
                      "rss_before_kib": med(good, "rss_before_kib"),
                      "rss_after_kib": med(good, "rss_after_kib"),
                      "errors": sum(r["errors"] for r in runs[t]),
                      "peak_rss_kib": max((r["peak_rss_kib"] or 0 for r in runs[t]), default=0) or None}
    ratios = {"flowgate/%s" % p: {"kib_per_conn": ratio(summary["flowgate"]["kib_per_conn"],
                                                        summary[p]["kib_per_conn"])}
              for p in PEERS if p in summary and "flowgate" in summary}
    return {"kind": "idle", "title": TITLES[scen], "connections": n, "order": order,
            "summary": summary, "ratios": ratios, "runs": runs}


scens = []
for line in open(os.path.join(TMP, "scenarios.txt")):
    s = line.strip()
    if s and s not in scens:
        scens.append(s)
results = {s: (idle_scenario(s) if s in IDLE else wrk_scenario(s)) for s in scens}

# ---------------------------------------------------------------- table
for s in scens:
    res = results[s]
    print()
    print("== " + res["title"])
    if res["kind"] == "idle":
        print("%-12s %12s %10s %12s %12s %8s" % ("target", "connections", "KiB/conn",
              "RSS before", "RSS after", "flagged"))
        for t in res["order"]:
            x = res["summary"][t]
            print("%-12s %12d %10s %12s %12s %5d/%d" % (
                t, res["connections"], f(x["kib_per_conn"], "%.1f"),
                f(x["rss_before_kib"] and x["rss_before_kib"] / 1024.0, "%.1f MiB"),
                f(x["rss_after_kib"] and x["rss_after_kib"] / 1024.0, "%.1f MiB"),
                x["flagged_runs"], x["runs"]))
        for k, v in res["ratios"].items():
            print("%s: memory per idle connection %s" % (k, f(v["kib_per_conn"], "%.2f")))
        continue
    helper = any(x["redis_us_per_req"] is not None for x in res["summary"].values())
    print("%-12s %10s %8s %8s %11s %9s %7s %7s%s" % (
        "target", "req/s", "p50 ms", "p99 ms", "cpu us/req", "peak RSS", "errors", "flagged",
        "  redis us/req" if helper else ""))
    for t in res["order"]:
        x = res["summary"][t]
        print("%-12s %10s %8s %8s %11s %9s %7d %4d/%d%s" % (
            t, f(x["rps"], "%.0f"), f(x["p50_ms"], "%.2f"), f(x["p99_ms"], "%.2f"),
            f(x["cpu_us_per_req"], "%.1f") if t != "backend" else "(direct)",
            f(x["peak_rss_kib"] and x["peak_rss_kib"] / 1024.0, "%.1fM"),
            x["non2xx"] + x["socket_errors"], x["flagged_runs"], x["runs"],
            ("  %12s" % f(x["redis_us_per_req"], "%.1f")) if helper else ""))
    for k, v in res["ratios"].items():
        print("%s: req/s %s, p99 %s, cpu/req %s, peak RSS %s" % (
            k, f(v["rps"], "%.2f"), f(v["p99_ms"], "%.2f"), f(v["cpu_us_per_req"], "%.2f"),
            f(v["peak_rss_kib"], "%.2f")))
print()
print("ratios above 1: flowgate has more of it (better for req/s, worse for the others);"
      " S6: workers = 2 over workers = 1")

# ---------------------------------------------------------------- JSON
versions = read_versions(os.path.join(TMP, "versions.txt"))
doc = {
    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": host_info(),
    "settings": {"duration_s": int(os.environ["DURATION"]), "rounds": int(os.environ["ROUNDS"]),
                 "warmup_s": int(os.environ["WARMUP"]), "idle_conns": int(os.environ["IDLE_CONNS"]),
                 "h2_idle_conns": int(os.environ.get("H2_IDLE_CONNS", "0")),
                 "h2_clients": int(os.environ.get("H2_CLIENTS", "0")),
                 "h2_streams": int(os.environ.get("H2_STREAMS", "0")),
                 "clk_tck": CLK},
    "versions": versions,
    "scenarios": results,
}
with open(OUT + ".json", "w") as out:
    json.dump(doc, out, indent=2)
    out.write("\n")
print("results: %s.json" % os.path.relpath(OUT))

# ---------------------------------------------------------------- chart data
# Two blocks: 0 = cost per unit (CPU per request; S5: KiB per idle connection),
# 1 = requests/s. Columns: x label flowgate nginx haproxy (flowgate = 1) and
# the three absolute values as labels. NaN: no bar (sits out or all flagged).


def cell(summary, t, key):
    x = summary.get(t)
    return x.get(key) if x else None


def row(i, label, summary, key, fmt, flagged_note=True):
    base = cell(summary, "flowgate", key)
    rel, lab, ly = [], [], []
    for t in ("flowgate", "nginx", "haproxy"):
        v = cell(summary, t, key)
        if v is None or not base:
            rel.append("NaN")
            ly.append("0")
            if t in summary and flagged_note:
                lab.append('"errors"')
            elif t in summary:
                lab.append('"-"')
            else:
                lab.append('"n/a"')
        else:
            rel.append("%.4f" % (v / base))
            ly.append(rel[-1])
            lab.append('"%s"' % (fmt(v) if callable(fmt) else fmt % v))
    return '%d "%s" %s %s %s' % (i, label, " ".join(rel), " ".join(lab), " ".join(ly))


cost, thr = [], []
for s in scens:
    res = results[s]
    if s == "S6":
        continue
    if res["kind"] == "idle":
        cost.append((SHORT[s] + "\\n(KiB/conn)", res["summary"], "kib_per_conn", "%.0f KiB"))
        continue
    cost.append((SHORT[s], res["summary"], "cpu_us_per_req",
                 lambda v: "%.2f ms" % (v / 1000.0) if v >= 1000 else "%.0f µs" % v))
    thr.append((SHORT[s], res["summary"], "rps", "%.0f"))
with open(OUT + ".dat", "w") as d:
    d.write("# x label, flowgate nginx haproxy relative to flowgate (NaN: no bar),"
            " their labels, the labels' heights\n")
    d.write("# block 0: cost per request (S5: per idle connection)\n")
    for i, c in enumerate(cost):
        d.write(row(i, *c) + "\n")
    if not cost:
        d.write('0 "none" NaN NaN NaN "" "" "" 0 0 0\n')
    d.write("\n\n# block 1: requests/s\n")
    for i, c in enumerate(thr):
        d.write(row(i, *c) + "\n")
    if not thr:
        d.write('0 "none" NaN NaN NaN "" "" "" 0 0 0\n')

notes = []
if "S1" in results and results["S1"]["summary"].get("backend", {}).get("rps"):
    notes.append("backend direct (plain HTTP, the ceiling): %.0f req/s"
                 % results["S1"]["summary"]["backend"]["rps"])
if "S2" in results:
    x = results["S2"]["summary"].get("flowgate", {}).get("redis_us_per_req")
    if x is not None:
        notes.append("S2: redis-server adds %.1f µs/req to flowgate (not in the bars)" % x)
if "S6" in results:
    r = results["S6"]["ratios"].get("flowgate-w2/flowgate-w1", {})
    notes.append("S6 flowgate workers=2 / workers=1: req/s x%s, CPU/req x%s"
                 % (f(r.get("rps"), "%.2f"), f(r.get("cpu_us_per_req"), "%.2f")))
notes.append("%d s x %s rounds, medians, %d CPUs, %s" % (
    int(os.environ["DURATION"]), os.environ["ROUNDS"], os.cpu_count(), doc["time"]))
# Gnuplot reads this file (`load`): the chart's subtitle, two notes a line.
lines = ["   |   ".join(notes[i:i + 2]) for i in range(0, len(notes), 2)]
text = "\\n".join(l.replace("\\", "").replace('"', "").replace("_", " ") for l in lines)
with open(OUT + ".meta", "w") as m:
    m.write('subtitle = "%s"\n' % text)
