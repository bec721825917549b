"""``python -m policy_host.cli``: the same as the ``policy-host`` command."""

import sys

from policy_host.cli.main import main

sys.exit(main())
