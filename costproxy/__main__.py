import sys

from costproxy.cli import main

sys.exit(main())
