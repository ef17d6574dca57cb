import sys

from ferroquant.cli import main

sys.exit(main())
