import sys

from ..common import run_cli
from .analyze import main

sys.exit(run_cli(main))
