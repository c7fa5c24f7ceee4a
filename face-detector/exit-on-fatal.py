"""supervisord event listener: when a program enters FATAL, stop supervisord so the container exits.

supervisord gives a program `startretries` tries to stay up for `startsecs`; after that the program is
FATAL and supervisord never starts it again, but supervisord itself (PID 1) keeps running, so Docker
sees a live container and never applies its restart policy. This listener is subscribed to
PROCESS_STATE_FATAL (face-detector/supervisord.conf). It speaks supervisor's event-listener protocol
through supervisor's own helpers (`supervisor.childutils`) and sends SIGTERM to supervisord, its parent:
supervisord stops the other program and exits, and `restart: unless-stopped` starts a fresh container.
"""

from __future__ import annotations

import os
import signal
import sys

from supervisor import childutils


def main() -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"] == "PROCESS_STATE_FATAL":
            process = childutils.get_headers(payload)
            sys.stderr.write(
                f"exit-on-fatal: {process['processname']} is FATAL (it kept exiting during start-up); "
                "stopping supervisord so that the container exits and Docker restarts it\n"
            )
            sys.stderr.flush()
            os.kill(os.getppid(), signal.SIGTERM)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
