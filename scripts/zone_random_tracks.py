"""Random tracks for the zone oracle: people wandering, loitering on a line or a zone's edge, unseen
for single frames and for gaps longer than a grace or a track's end, on a quarter-pixel grid (so
that points land exactly on edges and at the dead band's edge too). Same CSV as
scripts/reference_tracks.py writes (the tracker's box equal to the detection's); deterministic for
a seed.
    python zone_random_tracks.py --seed 7 --out tests/reference/zones/random.csv
"""

import argparse
import random

FRAMES, WIDTH, HEIGHT = 600, 768, 576
# Points people loiter about: on the lines and zone edges of random.rules.toml.
HOTSPOTS = [(300, 300), (500, 200), (200, 400), (420, 250), (600, 450)]


def q(v):
    """To the quarter-pixel grid, inside the image."""
    return round(v * 4) / 4


def track(rng):
    """{frame: (x, y)} of one person's anchor (the box's bottom centre)."""
    start = rng.randrange(FRAMES - 20)
    length = rng.randint(20, 300)
    loiter = rng.random() < 0.4
    x, y = home = rng.choice(HOTSPOTS) if loiter else (rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT))
    vx, vy = rng.uniform(-6, 6), rng.uniform(-6, 6)
    out, f = {}, start
    while f < min(start + length, FRAMES):
        if rng.random() < 0.03:
            f += rng.choice([3, 9, 12, 25, 33, 40])  # unseen for a while
            continue
        if loiter:
            # Steps of whole pixels, pulled back home: often exactly on the line or the edge.
            x, y = x + rng.choice([-6, -3, -1, 0, 1, 3, 6]), y + rng.choice([-6, -4, -2, 0, 2, 4, 6])
            x, y = x + round((home[0] - x) * 0.2), y + round((home[1] - y) * 0.2)
        else:
            vx, vy = vx + rng.uniform(-1, 1), vy + rng.uniform(-1, 1)
            x, y = x + vx, y + vy
        x, y = min(max(x, 0), WIDTH), min(max(y, 60), HEIGHT)
        if rng.random() > 0.08:  # missed on single frames
            out[f] = (q(x), q(y))
        f += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--tracks", type=int, default=40)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tracks = {i + 1: track(rng) for i in range(a.tracks)}
    with open(a.out, "w") as f:
        f.write(f"# random tracks: scripts/zone_random_tracks.py --seed {a.seed} --tracks {a.tracks}\n")
        f.write(f"# frames random {FRAMES}\n")
        f.write("scenario,frame,det,x1,y1,x2,y2,score,class,id,tx1,ty1,tx2,ty2\n")
        for fr in range(FRAMES):
            seen = [(i, t[fr]) for i, t in tracks.items() if fr in t]
            for d, (i, (x, y)) in enumerate(seen):
                box = [x - 10, y - 60, x + 10, y]
                cells = ["random", fr, d, *box, 0.9, 0, i, *box]
                f.write(",".join(map(str, cells)) + "\n")


if __name__ == "__main__":
    main()
