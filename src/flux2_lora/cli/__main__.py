import sys

from flux2_lora.cli import main

sys.exit(main())
