import sys

from changeagent.cli.main import main

sys.exit(main())
