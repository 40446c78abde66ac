"""The exit statuses of the ``wsgiloop`` command: one per cause, the same with one worker or many.

Start-up failures are reported as one line on the error log, never a traceback; a process
manager (systemd's ``RestartPreventExitStatus=``, a deploy script) can tell them apart by status.
The README's table is this list.
"""

from __future__ import annotations

OK = 0  # stopped by SIGTERM/SIGINT/SIGQUIT (or --check-config found nothing wrong)
CRASH = 1  # an unexpected error inside wsgiloop: a bug, logged with its traceback
USAGE = 2  # the command line, config file or environment is invalid (argparse's status)
APP_LOAD = 3  # the app cannot be loaded: module missing, attribute missing, import raised
LISTEN = 4  # a listening socket cannot be had: address in use, not available, no permission
