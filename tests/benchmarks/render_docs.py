"""Render docs/benchmarks.md from tests/benchmarks/page.md and the benchmarks' JSON results.

    .venv/bin/python tests/benchmarks/render_docs.py           # write docs/benchmarks.md
    .venv/bin/python tests/benchmarks/render_docs.py --check   # fail if the page is stale

Each ``<!-- results:NAME -->`` marker of the template becomes the tables of
``results/NAME.json``, or a line saying the benchmark has not been recorded: no figure on the
page is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "page.md"
RESULTS = HERE / "results"
PAGE = HERE.parents[1] / "docs" / "benchmarks.md"
MARKER = re.compile(r"<!-- results:(\w+) -->")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _s(v: float) -> str:
    return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def extract(r: dict) -> str:
    n_buf = r["pois"] * len(r["radii"])
    ex = r["exactextract"]
    subset = (f" exactextract ran on the first {r['exact_pois']:,} POIs; its CPU time for all "
              f"is scaled from those ({_s(ex['cpu_s'])} s measured)."
              if r["exact_pois"] < r["pois"] else "")
    head = (f"**{r['case']}** ({r['date']}): {r['pois']:,} real POIs × {len(r['radii'])} radii "
            f"= {n_buf:,} buffers; {r['tiles']} tiles, {r['width_px']:,} × {r['height_px']:,} "
            f"px; {r['blocks']} blocks of 256² touched.{subset}")
    floors, vs = r["floors"], r["vs_floor"]
    names = {"inflate": "floor: inflate the touched blocks once (libdeflate)",
             "decode": "floor + decode: the same, then float32 through the LUT",
             "gdal": "GDAL inflate of the touched blocks once"}

    def ratios(cpu: float) -> list[str]:
        return [f"{cpu / floors[how]['cpu_s']:.2f}×" for how in names]

    rows = [
        ["aether (`write_point_means(CogSource)`: int8 tiles to a Parquet table)",
         _s(r["aether"]["cpu_s"]),
         _s(r["aether"]["wall_s"]), f"{r['aether']['peak_mb']:,.0f}", str(r["aether"]["load"]),
         f"{r['vs_exactextract']:.1f}× faster", *(f"**{vs[how]:.2f}×**" for how in names)],
        ["exactextract (`raster-sequential`, in-memory float32 tiles)",
         _s(ex["cpu_s_all_pois"]), _s(ex["wall_s"]), f"{ex['peak_mb']:,.0f}", str(ex["load"]),
         "1×", *ratios(ex["cpu_s_all_pois"])],
        *([label, _s(floors[how]["cpu_s"]), _s(floors[how]["wall_s"]),
           f"{floors[how]['peak_mb']:,.0f}", str(floors[how]["load"]), "–",
           *ratios(floors[how]["cpu_s"])] for how, label in names.items()),
    ]
    table = _table(["method", "CPU s", "wall s", "peak MB", "load", "vs exactextract",
                    "vs inflate floor", "vs inflate + decode", "vs GDAL inflate"], rows)
    diff = (f"Largest absolute difference of aether's means from exactextract's: "
            f"{r['max_abs_diff']:.1e}.")
    if r.get("repeat", 1) > 1:
        runs = r["runs_cpu_s"]
        diff += (f" Each floor and aether ran {r['repeat']} times, interleaved; the table "
                 f"shows the least CPU of each (" + "; ".join(
                     f"{'aether' if k == 'aether' else names[k].split(':')[0]}: "
                     f"{', '.join(_s(v) for v in runs[k])} s" for k in ("aether", *names))
                 + ").")
    scale = _table(["POIs", "CPU s", "CPU µs per POI above the inflate floor", "wall s",
                    "peak MB", "load"],
                   [[f"{s['pois']:,}", _s(s["cpu_s"]),
                     f"{(s['cpu_s'] - floors['inflate']['cpu_s']) / s['pois'] * 1e6:,.0f}",
                     _s(s["wall_s"]), f"{s['peak_mb']:,.0f}", str(s["load"])]
                    for s in r["scaling"]])
    return "\n\n".join([head, table, diff, "Scaling, clustered POIs on the same tiles:", scale])


def train(r: dict) -> str:
    head = (f"**{r['pairs']:,} synthetic pairs**, {r['epochs']} epochs, batch 512 drop_last, "
            f"**{r['threads']} torch thread(s)** pinned for each, the least-CPU of "
            f"{r['repeat']} interleaved runs of each ({r['date']}, load "
            f"{r['load_start']:.1f} → {r['load_at_end']:.1f} on {r['cpus']} cores). CPU time: "
            "aether's process (`time.process_time`, all threads) and the reference's process "
            "tree (its loader workers included), per epoch after the first.")
    steps = r["pairs"] // 512
    f = r["floor"]
    loops = [("aether `paper` preset", r["aether"])]
    if r["reference"] is not None:
        loops.append(("official AETHER `train.py` (4 loader workers)", r["reference"]))
    rows = [[name, f"{m['pairs_per_cpu_s']:,.0f}", f"{m['epoch_cpu_s']:.2f}",
             f"{m['pairs_per_s']:,.0f}", " ".join(f"{x:.4f}" for x in m["losses"])]
            for name, m in loops]
    rows.append(["floor: the step's 16 matrix products alone", f"{f['pairs_per_cpu_s']:,.0f}",
                 f"{f['step_cpu_ms'] * steps / 1e3:.2f}", f"{f['pairs_per_s']:,.0f}", ""])
    runs = "; ".join(f"{k} {', '.join(f'{x:,}' for x in v)}" for k, v in r["runs"].items())
    floor = (f"The floor is one step's {f['gflop']:.2f} GFLOP of float32 products on "
             f"contiguous operands, {f['step_cpu_ms']:.2f} ms of CPU at {f['threads']} "
             f"thread(s): aether runs at "
             f"{r['aether']['pairs_per_cpu_s'] / f['pairs_per_cpu_s']:.0%} of it")
    if r["reference"] is None:
        tail = (f"The reference did not run ({r['reference_skipped']}). Every run's pairs per "
                f"CPU-second: {runs}. {floor}.")
    else:
        tail = (f"aether / reference: **{r['ratio']:.2f}×** pairs per CPU-second (every run's: "
                f"{runs}); loss curves within {r['max_loss_diff']:.4f} (same initial weights; "
                f"the two shuffle differently). {floor}, and it is "
                f"{f['pairs_per_cpu_s'] / r['reference']['pairs_per_cpu_s']:.2f}× the "
                "reference.")
    return (head + "\n\n" + _table(["loop", "pairs per CPU-s", "CPU s/epoch", "pairs/s (wall)",
                                     "epoch losses"], rows) + "\n\n" + tail)


def similar(r: dict) -> str:
    head = (f"**{r['n']:,} random unit vectors**, {r['dim']}-d ({r['date']}, load "
            f"{r['load_avg']:.1f}), {r['queries']} queries, {r['threads']} BLAS/FAISS "
            f"thread(s); CPU time of the process (`time.process_time`), wall time beside it; "
            f"the index built in {r['approx_build_cpu_s']:.1f} s of CPU.")
    rows = [["exact (float32 matrix product)", f"{r['exact_cpu_ms_per_query']:.2f}",
             f"{r['exact_ms_per_query']:.2f}", "1.000"],
            [f"FAISS {r['index']}", f"{r['approx_cpu_ms_per_query']:.3f}",
             f"{r['approx_ms_per_query']:.3f}", f"{r['recall_at_10']:.3f}"]]
    tail = (f"The approximate index takes **{r['speedup']:.0f}×** less CPU per query than "
            "exact search.")
    return (head + "\n\n" + _table(["search", "CPU ms per query", "wall ms per query",
                                     "recall@10 vs exact"], rows) + "\n\n" + tail)


def serve(r: dict) -> str:
    head = (f"**{r['cells']:,} cells** × {r['dim']}-d ({r['date']}, {r['cpus']} cores, load "
            f"{r['load_at_end']:.1f} at the end), model `{r['model']}` for text; "
            f"{r['workers']} workers, a queue of {r['queue']}; the state built in "
            f"{r['load_wall_s']:.0f} s; heat raster {r['heat'][1]:,} × {r['heat'][0]:,} px. "
            f"Compute floor, in the server process on the same matrix (`X @ q` + "
            f"`argpartition`): p50 **{r['floor']['p50_ms']:.1f} ms**.")
    kinds = {"text": "text query", "like": "more like this"}
    rows = [[kinds[x["kind"]], str(x["clients"]), f"{x['p50_ms']:,.0f}", f"{x['p99_ms']:,.0f}",
             f"{x['vs_floor']:.2f}×", f"{x['per_s']:.1f}", f"{x['server_cpu_ms_per_answer']:.0f}",
             f"{x['reply_bytes']:,}", str(x["refused"])]
            for x in r["rows"]]
    table = _table(["request", "clients", "p50 ms", "p99 ms", "p50 / floor", "answers/s",
                    "server CPU ms/answer", "reply bytes", "503"], rows)
    b = r["burst"]
    refused = (f", each refusal within {b['refused_p99_ms']:,.0f} ms (p99)"
               if b["refused_p99_ms"] is not None else "")
    load = (f"Load test: {b['requests']:,} \"more like this\" requests arriving evenly over "
            f"{b['seconds']:.0f} s (one connection each): **{b['answered']:,} answered** (p99 "
            f"{b['answered_p99_ms']:,.0f} ms), **{b['refused']:,} refused with 503**"
            f"{refused}, {b['failed']} failed or timed out (30 s); the server's memory "
            f"{b['rss_before_mb']:,.0f} MB before it, peak {b['peak_mb']:,.0f} MB during it.")
    pg = r.get("page")
    shown = ([f"In the page (headless Chromium, `--browser`): a typed text query is answered "
              f"and drawn — {pg['coloured_pixels']:,} coloured pixels and the top-k markers — "
              f"in **{pg['text_p50_ms']:,.0f} ms**, a click (\"more like this\") in "
              f"**{pg['click_p50_ms']:,.0f} ms** (p50 of {pg['queries']} queries, 5 clicks)."]
             if pg else [])
    return "\n\n".join([head, table, *shown, load])


def zonal(r: dict) -> str:
    parts = []
    for c in r["cases"]:
        subset = (f"; exactextract on the first {c['exact_pois']:,} POIs, its rate measured on "
                  "those" if c["exact_pois"] < c["pois"] else "")
        parts.append(f"**{c['label']}** ({r['date']}, load {c['load']}): {c['mpx']:.2f} M px × "
                     f"64 bands, {c['pois']:,} POIs × {c['radii']} radii{subset}.")
        parts.append(_table(
            ["method", "CPU s", "buffers per CPU s", "peak MB", "vs exactextract",
             "max abs diff"],
            [[row["method"], _s(row["cpu_s"]), f"{row['buffers_per_cpu_s']:,.0f}",
              f"{row['peak_mb']:,.0f}", f"{row['vs_exactextract']:.2f}×",
              "–" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.1e}"]
             for row in c["rows"]]))
    return "\n\n".join(parts)


def ee(r: dict) -> str:
    n_req = r["pois"] * len(r["radii"]) / r["batch"]
    cal = ", ".join(f"{c['cpu_s_per_eecu']:.3f}" for c in r["calibration"]
                    if c["cpu_s_per_eecu"] is not None)
    head = (f"**{r['pois']:,} random POIs × {len(r['radii'])} radii** = "
            f"{r['pois'] * len(r['radii']):,} buffers, {r['batch']:,} a request "
            f"(~{n_req:.0f} requests; {r['date']}, {r['cpus']} cores"
            f"{', `--quick`' if r['quick'] else ''}). Server time modelled at "
            f"{r['server_s_per_eecu']:g} s per EECU-second; the warm-up passes measured "
            f"{cal} s of emulator CPU per EECU-second (under this run's load).")
    parts = [head]
    for lat in sorted({x["latency_s"] for x in r["runs"]}):
        rows = [x for x in r["runs"] if x["latency_s"] == lat]
        base = {x["method"]: x["wall_s"] for x in rows if x["method"] != "aether"}
        names = {"sequential": "sequential `getInfo()` loop",
                 "naive": "naive (geemap-style) loop"}
        table = _table(
            ["client", "wall s", "floor s", "wall / floor", "client CPU s", "requests",
             "server s (modelled)", "peak in flight", "sequential / it", "naive / it",
             "load"],
            [[f"aether, {x['concurrency']} in flight" if x["method"] == "aether"
              else names[x["method"]] + f" (×{x['extrapolated']:g} extrapolated)",
              _s(x["wall_s"]), _s(x["floor_s"]), f"{x['wall_s'] / x['floor_s']:.2f}",
              _s(x["client_cpu_s"]), f"{x['requests']:.0f}", _s(x["server_s"]),
              str(x["peak_in_flight"]), f"{base['sequential'] / x['wall_s']:.1f}×",
              f"{base['naive'] / x['wall_s']:.1f}×", str(x["load"])] for x in rows])
        flights = "; ".join(
            f"{x['concurrency']} in flight ({x['step_s']:.2f} s steps): "
            f"`{' '.join(f'{v:g}' for v in x['timeline'])}`"
            for x in rows if x["method"] == "aether")
        parts += [f"Latency **{lat * 1000:.0f} ms**:", table,
                  f"Requests in flight over aether's runs — {flights}."]
    late = sum(x["computed"] + x["late"] for x in r["runs"])
    parts.append("Every timed answer came from the warm-up's results on time." if not late
                 else f"{late} timed answers were computed or late: the figures above include "
                      "this machine's CPU there.")
    return "\n\n".join(parts)


def fleet(r: dict) -> str:
    m = r["modes"]
    head = (f"**{r['cities']} cities** ({r['date']}, {r['cpus']} CPUs): {r['strips']} strips of "
            f"{r.get('area', 'the centre of Singapore')} and {r['small']} small cities, "
            f"{r['pois']:,} real POIs × 2 radii "
            "on a generated raster (synthetic values).")
    rows = [[name, _s(x["wall_s"]), f"{x['cities_per_hour']:,}", _s(x["client_cpu_s"]),
             _s(x["worker_cpu_s"]), f"{100 * x['client_share']:.1f}%",
             "–" if x["utilisation"] is None else f"{100 * x['utilisation']:.0f}%",
             " / ".join(map(str, x["tasks_per_worker"])),
             "reference" if "tables_equal" not in x else ("yes" if x["tables_equal"] else "NO"),
             f"{m['sequential']['wall_s'] / x['wall_s']:.2f}×", str(x["load"])]
            for name, x in m.items()]
    table = _table(["mode", "wall s", "cities/h", "client CPU s", "worker CPU s",
                    "client share", "worker use", "tasks per worker", "same tables",
                    "vs sequential", "load"], rows)
    ee = r["ee"]
    ee_line = (f"Earth Engine route, {ee['cities']} small cities on the 2-worker cluster, "
               f"{ee['latency_s'] * 1000:.0f} ms added to every request, `ee: {{concurrency: "
               f"{ee['cap']}}}` (each city's source asks for 4): {ee['requests']} "
               f"computeFeatures requests, at most **{ee['peak_in_flight']} in flight** "
               f"(the cap: {ee['cap']}), {_s(ee['wall_s'])} s.")
    two = m["cluster x2"]
    per_city = two["worker_cpu_s"] / r["cities"]
    client_city = two["client_cpu_s"] / r["cities"]
    nodes, cores, cities = 20, r["cpus"], 200
    work_h = cities * per_city / (nodes * cores) / 3600
    client_h = cities * client_city / 3600
    sat = per_city / (client_city * cores) if client_city else float("inf")
    req_city = ee["requests"] / ee["cities"]
    paper = (f"On paper, from these costs: a city here takes {per_city:.2f} s of worker CPU and "
             f"at most {client_city:.2f} s of the client's (its start-up, Python, aether and "
             f"distributed imports, is in that figure, so per city it is an upper bound). "
             f"200 such cities on 20 nodes of {cores} "
             f"cores: {work_h * 3600:,.0f} s of worker time if the work spreads evenly, against "
             f"{client_h * 3600:,.0f} s of client CPU — the client, which plans, submits and "
             f"collects, saturates at about {sat:.0f} nodes of {cores} cores for cities this "
             f"small (bigger cities move that point out in proportion). On Earth Engine, "
             f"{req_city:.1f} requests a city at ≥ 0.3 s each under a per-project cap of K in "
             f"flight take at least 200 × {req_city:.1f} × 0.3 / K s "
             f"({200 * req_city * 0.3 / 40:,.0f} s at EE's default ~40): Earth Engine's "
             "concurrency, not the cluster, bounds an EE fleet.")
    return "\n\n".join([head, table, ee_line, paper])


RENDERERS: dict[str, Callable[[dict], str]] = {"extract": extract, "zonal": zonal,
                                              "similar": similar, "train": train,
                                              "fleet": fleet, "serve": serve, "ee": ee}
SCRIPTS = {"extract": "bench_extract.py", "zonal": "bench_zonal.py", "ee": "bench_ee.py",
           "grid": "bench_grid.py", "train": "bench_train.py", "similar": "bench_similar.py",
           "fleet": "bench_fleet.py", "serve": "bench_serve.py"}


def section(name: str) -> str:
    path = RESULTS / f"{name}.json"
    if not path.is_file() or name not in RENDERERS:
        return (f"*No recorded figures: `tests/benchmarks/{SCRIPTS[name]}` does not write "
                f"`results/{name}.json` yet.*")
    return RENDERERS[name](json.loads(path.read_text()))


def render() -> str:
    body = MARKER.sub(lambda m: section(m.group(1)), TEMPLATE.read_text())
    note = ("<!-- generated by tests/benchmarks/render_docs.py from tests/benchmarks/page.md "
            "and tests/benchmarks/results/*.json: edit those, not this page -->\n")
    return note + body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="fail if docs/benchmarks.md is stale")
    args = ap.parse_args()
    text = render()
    if args.check:
        sys.exit(0 if PAGE.read_text() == text else "docs/benchmarks.md is stale: re-render it")
    PAGE.write_text(text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
