"""``python app.py``: the web UI, same options as ``flux2-lora ui`` (local only unless told otherwise)."""

import sys

from flux2_lora.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
