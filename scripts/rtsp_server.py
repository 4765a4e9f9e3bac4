#!/usr/bin/python3
"""Serves one H.264 .mp4 file over RTSP on 127.0.0.1, in real time, for the live-source tests.

    scripts/rtsp_server.py FILE.mp4 PORT [MOUNT...]     (MOUNT defaults to /stream)

Prints one line "ready rtsp://127.0.0.1:PORT/MOUNT" (the first mount) on stdout once it listens;
runs until SIGTERM or SIGINT. Each mount is a camera of its own, showing the file; each client
gets its own pipeline, so a client that reconnects sees the file from its start.
Needs Debian's python3-gi and gir1.2-gst-rtsp-server-1.0 (scripts/provision.sh installs them); run
it with /usr/bin/python3, which is the Python those packages belong to.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, port = sys.argv[1], sys.argv[2]
    mounts = sys.argv[3:] or ["/stream"]
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # config-interval=1: SPS/PPS every second, so a client can start decoding at any key frame.
    factory.set_launch(
        f'( filesrc location="{path}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'
    )
    factory.set_shared(False)
    for mount in mounts:
        server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"ready rtsp://127.0.0.1:{port}{mounts[0]}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
