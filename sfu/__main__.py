import sys

from sfu.cli import main

sys.exit(main())
