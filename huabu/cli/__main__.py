"""`python -m huabu.cli`: the `huabu` command."""

import sys

from huabu.cli.main import main

sys.exit(main())
