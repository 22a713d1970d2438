"""`python -m sal_ray.cli ...`: the same as `sal-ray ...`."""

import sys

from . import main

sys.exit(main())
