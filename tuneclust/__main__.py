"""python -m tuneclust"""

import sys

from tuneclust.cli import main

sys.exit(main())
