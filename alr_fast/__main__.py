import sys

from alr_fast.cli import main

sys.exit(main())
