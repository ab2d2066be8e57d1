"""vLLM's OpenAI-compatible server app, built as an engine's api_server builds it (with the middleware the
node agent passes), but with no model and no engine behind it: every route and every middleware, nothing else.

Run by tests/serving/test_engine_guard.py with the engine's Python and the engine's environment:
``python engine_app.py PORT MIDDLEWARE``. Prints the app's route paths as one JSON line, then serves on
127.0.0.1:PORT until it is terminated.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

# Every task a replica may serve, so that every router vLLM has for them is mounted.
TASKS = ("generate", "transcription", "realtime", "embed", "classify", "token_embed", "token_classify")


def main() -> None:
    port, middleware = int(sys.argv[1]), sys.argv[2]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        ["--model", "unused", "--middleware", middleware]
    )
    app = build_app(args, supported_tasks=TASKS)
    print(
        json.dumps(sorted({route.path for route in app.routes if getattr(route, "path", None)})), flush=True
    )
    # No lifespan: it would start an engine client; the routes and the middleware are what is under test.
    uvicorn.run(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")


if __name__ == "__main__":
    main()
