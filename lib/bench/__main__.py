import sys

from ..common import run_cli
from .run import main

sys.exit(run_cli(main))
