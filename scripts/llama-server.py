#!/usr/bin/env python3
"""Runs one llama.cpp model server (the `xllamacpp` wheel, CPU build).

    python3 scripts/llama-server.py --model PATH --port N --alias NAME
        [--ctx 2048] [--parallel 4] [--threads 1] [--host 127.0.0.1]
        [--grammar-file PATH]

Serves llama.cpp's HTTP API (/health, /v1/models, /v1/chat/completions with
streaming, /v1/completions, /metrics) on HOST:PORT under the model name
NAME. `--ctx` is the whole context, shared by the `--parallel` slots (each
slot gets ctx/parallel tokens); `--threads` is the CPU threads for
generation and for prompt processing. `--grammar-file` names a GBNF grammar
(llama.cpp's grammar format) that constrains every completion that does not
bring a grammar of its own: it is how a model too small to follow a client's
output format by itself is made to follow it, on the server's side, leaving
the client unchanged (llama.cpp reads the grammar when the model has loaded,
and one it cannot parse stops the server there, its error on stderr). Prints
`ready http://HOST:PORT` on stdout once /health answers 200, and nothing
else there (llama.cpp logs on stderr). Runs until SIGTERM or SIGINT, or
until its parent process exits, then stops the server and exits 0. Exits 1
with one line on stderr naming the problem when the server cannot start
(model file missing, port in use, a model llama.cpp cannot load, xllamacpp
not installed: scripts/model-assets.sh installs it).
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request


def fail(msg):
    print(f"llama-server: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def port_free(host, port):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def healthy(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main():
    ap = argparse.ArgumentParser(description="Runs one llama.cpp model server.")
    ap.add_argument("--model", required=True, help="GGUF model file")
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--alias", required=True, help="model name the API answers to")
    ap.add_argument("--ctx", type=int, default=2048, help="context tokens, shared by the slots")
    ap.add_argument("--parallel", type=int, default=4, help="slots (requests served at once)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--grammar-file", help="GBNF grammar for completions that bring none")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        fail(f"model file not found: {args.model}")
    if not os.access(args.model, os.R_OK):
        fail(f"model file not readable: {args.model}")
    if not 0 < args.port < 65536:
        fail(f"port out of range: {args.port}")
    if args.ctx < 1 or args.parallel < 1 or args.threads < 1:
        fail("--ctx, --parallel and --threads must be at least 1")
    grammar = None
    if args.grammar_file is not None:
        try:
            with open(args.grammar_file, encoding="utf-8") as f:
                grammar = f.read()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read grammar file {args.grammar_file}: {e}")
        if not grammar.strip():
            fail(f"grammar file {args.grammar_file} is empty")
    if not port_free(args.host, args.port):
        fail(f"port {args.port} on {args.host} is in use")
    try:
        import xllamacpp
    except ImportError as e:
        fail(f"cannot import xllamacpp ({e}); scripts/model-assets.sh installs it")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx
    p.n_parallel = args.parallel
    p.cont_batching = True
    p.endpoint_metrics = True
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.n_gpu_layers = 0
    p.ui = False
    if grammar is not None:
        # The default sampling grammar: llama.cpp applies it to every request
        # that names no grammar, JSON schema or response format of its own.
        p.sampling.grammar = xllamacpp.CommonGrammar(
            xllamacpp.common_grammar_type.COMMON_GRAMMAR_TYPE_USER, grammar
        )

    # Blocks while the model loads; the HTTP socket is bound first.
    try:
        server = xllamacpp.Server(p)
    except RuntimeError as e:
        if not port_free(args.host, args.port):
            fail(f"port {args.port} on {args.host} is in use")
        fail(f"llama.cpp could not start a server for {args.model}: {str(e).splitlines()[-1]}")

    url = f"http://{args.host}:{args.port}" if ":" not in args.host else f"http://[{args.host}]:{args.port}"
    deadline = time.monotonic() + args.ready_timeout
    while not healthy(url):
        if stop.is_set():
            del server
            return 0
        if time.monotonic() > deadline:
            del server
            fail(f"{url}/health did not answer 200 within {args.ready_timeout:.0f} s")
        time.sleep(0.02)
    print(f"ready {url}", flush=True)

    while not stop.wait(0.5):
        if os.getppid() != parent:
            break
    # Stops the HTTP server and the slots' loop, then frees the model.
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
