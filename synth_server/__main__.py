import sys

from synth_server.cli.main import main

sys.exit(main())
