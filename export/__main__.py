"""``python -m export DIR --out DIR2 [--int8 --data FILE]``."""
from export.cli import export_cmd

if __name__ == "__main__":
    export_cmd(prog_name="python -m export")
