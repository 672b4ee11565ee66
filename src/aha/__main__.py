import sys

from aha.cli import main

sys.exit(main())
