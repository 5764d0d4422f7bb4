import sys

from maskray.cli import main

sys.exit(main())
