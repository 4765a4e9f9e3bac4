"""Expected zone and line events of reference tracks, from the rules as docs/analytics.md states
them, with shapely's geometry: the independent check of the analytics crate's zones module (written
from the documented rules, not from the Rust).

Run by scripts/zone_oracle.sh:
    python zone_oracle.py --tracks TRACKS.csv --fps 10 --rules RULES.toml --events OUT.csv --occupancy OUT.csv

TRACKS.csv is a file of scripts/reference_tracks.py: rows with an id are the tracker's output, and
their tracker box tx1..ty2 is the track's box; frames are numbered from 0, `# frames NAME N` gives
their count (the tracker saw every one, with or without rows), and frame f is at f / fps seconds.
Observations are parsed from their text straight to float64 (the Rust test does the same).

Every event is worked out per track from its observations alone; occupancy from each presence's
interval of frames (from the frame that confirmed the entry to the frame that decided the exit).

OUT events, one row per event, sorted by (frame, track, kind, rule):
    kind,track,rule,frame,time,entered,dwell,before,before_x,before_y,after_x,after_y,confirmed
`frame`/`time` are the event's frame; `entered` and `dwell` are for zone_exit; before (frame and
anchor), after_x/after_y (the anchor at `frame`) for line_in/line_out; `confirmed` is the frame
that confirmed a zone_enter or a crossing. Floats are written with repr (they read back exactly).
OUT occupancy: zone,second,count.
"""

import argparse
import math
import tomllib
from collections import defaultdict

from shapely.geometry import LineString, Point, Polygon

DEFAULTS = dict(ankle_score=0.5, track_end={"frames": 32})
ZONE_DEFAULTS = dict(enter_frames=3, exit_grace={"frames": 10})
LINE_DEFAULTS = dict(hold_frames=3, dead_band_px=5.0, cooldown={"frames": 10})


def exceeded(span, a, b):
    """Whether observation/frame b is more than the span after a; a and b are (seq, time)."""
    ((unit, n),) = span.items()
    return (b[0] - a[0] > n) if unit == "frames" else (b[1] - a[1] > n)


def read_tracks(path, fps):
    """{track: [(seq, time, (x, y))]} with the anchor at the box's bottom centre, and the frame count."""
    tracks, frames = defaultdict(list), None
    with open(path) as f:
        for line in f:
            if line.startswith("# frames "):
                frames = int(line.split()[-1])
            elif not line.startswith("#") and not line.startswith("scenario,"):
                c = line.rstrip("\n").split(",")
                if c[9]:
                    f_ = int(c[1])
                    x1, _, x2, y2 = (float(v) for v in c[10:14])
                    tracks[int(c[9])].append((f_, f_ / fps, ((x1 + x2) / 2, y2)))
    return tracks, frames


def lives(obs, track_end):
    """A track's observations split where it went unseen for longer than track_end."""
    out = [[obs[0]]]
    for o in obs[1:]:
        if exceeded(track_end, out[-1][-1], o):
            out.append([])
        out[-1].append(o)
    return out


def zone_presences(life, zone):
    """[(entered obs, confirming obs, last inside obs)] of one life of a track in a zone."""
    poly = Polygon(zone["polygon"])
    out, run, presence = [], [], None
    for o in life:
        inside = poly.covers(Point(o[2]))
        if presence is not None:
            if exceeded(zone["exit_grace"], presence[2], o):
                out.append(presence)
                presence = None
            else:
                if inside:
                    presence = (presence[0], presence[1], o)
                continue
        run = run + [o] if inside else []
        if len(run) == zone["enter_frames"]:
            presence, run = (run[0], o, o), []
    if presence is not None:
        out.append(presence)
    return out


def side(line, p):
    """+1 right of from -> to on screen, -1 left, 0 within the dead band (distance to the line
    through both points)."""
    (ax, ay), (bx, by) = line["from"], line["to"]
    d = ((bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)) / math.hypot(bx - ax, by - ay)
    return 1 if d > line["dead_band_px"] else -1 if d < -line["dead_band_px"] else 0


def crossings(life, line):
    """[(direction, before obs, after obs, confirming obs)] of one life of a track over a line."""
    segment = LineString([line["from"], line["to"]])
    in_side = 1 if line["in_side"] == "right" else -1
    out, settled, last_on_settled, run, last_count = [], None, None, [], None
    for o in life:
        s = side(line, o[2])
        if s == 0:
            run = []
            continue
        if s == settled:
            last_on_settled, run = o, []
            continue
        run = run + [o] if run and side(line, run[0][2]) == s else [o]
        if len(run) < line["hold_frames"]:
            continue
        if settled is not None:
            if last_count is not None and not exceeded(line["cooldown"], last_count, o):
                continue
            if LineString([last_on_settled[2], run[0][2]]).intersects(segment):
                out.append(("line_in" if s == in_side else "line_out", last_on_settled, run[0], o))
                last_count = o
        settled, last_on_settled, run = s, o, []
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", required=True)
    ap.add_argument("--fps", type=float, required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--occupancy", required=True)
    a = ap.parse_args()

    with open(a.rules, "rb") as f:
        rules = {**DEFAULTS, **tomllib.load(f)}
    zones = [{**ZONE_DEFAULTS, **z} for z in rules.get("zones", [])]
    lines = [{**LINE_DEFAULTS, **l} for l in rules.get("lines", [])]
    for z in zones:
        assert Polygon(z["polygon"]).is_valid and len(z["polygon"]) >= 3, z["name"]
    for l in lines:
        assert LineString([l["from"], l["to"]]).length > 0, l["name"]

    tracks, n_frames = read_tracks(a.tracks, a.fps)
    frames = [(f, f / a.fps) for f in range(n_frames)]
    events = []  # (frame, track, kind, rule, time, entered, dwell, before, before_x, before_y, after_x, after_y, confirmed)
    inside = defaultdict(lambda: [0] * n_frames)  # zone -> tracks inside per frame

    def decided(since, span, first):
        """The first frame from `first` on more than the span after `since` (n_frames if none)."""
        return next((f for f, t in frames[first:] if exceeded(span, since, (f, t))), n_frames)

    for track, obs in sorted(tracks.items()):
        for life in lives(obs, rules["track_end"]):
            events.append((life[0][0], track, "track_start", "", life[0][1], *[""] * 8))
            events.append((life[-1][0], track, "track_end", "", life[-1][1], *[""] * 8))
            end_decided = decided(life[-1], rules["track_end"], life[-1][0])
            for z in zones:
                for entered, confirmed, last in zone_presences(life, z):
                    events.append((entered[0], track, "zone_enter", z["name"], entered[1], "", "", "", "", "", "", "", confirmed[0]))
                    dwell = last[1] - entered[1]
                    events.append((last[0], track, "zone_exit", z["name"], last[1], entered[0], dwell, "", "", "", "", "", ""))
                    # Counted from the frame that confirmed the entry until the exit is decided:
                    # by the grace running out, or by the track's end.
                    until = min(decided(last, z["exit_grace"], last[0]), end_decided)
                    for f in range(confirmed[0], until):
                        inside[z["name"]][f] += 1
            for l in lines:
                for kind, before, after, confirmed in crossings(life, l):
                    events.append((after[0], track, kind, l["name"], after[1], "", "", before[0], *before[2], *after[2], confirmed[0]))

    events.sort(key=lambda e: (e[0], e[1], e[2], e[3]))
    with open(a.events, "w") as f:
        f.write("kind,track,rule,frame,time,entered,dwell,before,before_x,before_y,after_x,after_y,confirmed\n")
        for e in events:
            f.write(",".join(map(str, [e[2], e[1], e[3], e[0], repr(e[4]), *[repr(v) if isinstance(v, float) else v for v in e[5:]]])) + "\n")
    with open(a.occupancy, "w") as f:
        f.write("zone,second,count\n")
        for z in zones:
            per_second = defaultdict(int)
            for fr, t in frames:
                s = math.floor(t)
                per_second[s] = max(per_second[s], inside[z["name"]][fr])
            for s, n in sorted(per_second.items()):
                f.write(f"{z['name']},{s},{n}\n")
    kinds = defaultdict(int)
    for e in events:
        kinds[e[2]] += 1
    print(f"{a.events}: {len(events)} events {dict(sorted(kinds.items()))}")


if __name__ == "__main__":
    main()
