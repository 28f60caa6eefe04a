"""Run in a fresh process by test_patches_server_args.py: load SGLang's plugins the way the launcher
does, parse each argv given as a JSON list with SGLang's own parser, build ServerArgs from it (which
runs SGLang's full validation/resolution), and print one JSON result line per argv."""

import argparse
import json
import sys

from sglang.srt.plugins import load_plugins
from sglang.srt.server_args import ServerArgs

load_plugins()

for argv in json.loads(sys.argv[1]):
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    try:
        sa = ServerArgs.from_cli_args(parser.parse_args(argv))
        prefill, decode = sa.get_attention_backends()
        result = {"ok": True, "prefill": prefill, "decode": decode, "page_size": sa.page_size}
    except BaseException as e:  # SystemExit from argparse, ValueError/AssertionError from validation
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print("RESULT " + json.dumps(result), flush=True)
