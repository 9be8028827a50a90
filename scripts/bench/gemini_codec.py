"""What the Gemini, Code Assist and Ollama codecs cost, in-process (no proxy): per captured
Gemini CLI request (decode, and encode to each other format; the same requests as Ollama
bodies, decoded) and per stream event (decode of Gemini SSE and of Ollama NDJSON, encode of
canonical events to Gemini SSE, Gemini's JSON array, Code Assist SSE and Ollama NDJSON).

    .venv/bin/python -m scripts.bench.gemini_codec [--repeat N]

Inputs: Gemini CLI's captured requests (tests/data/captures/gemini-cli.*.request.json, 3-39 KB)
and a streamed answer of `--events` text deltas and a tool call, as Gemini and Ollama send it.
Figures are medians of `--repeat` timings (time.perf_counter); a measurement, never asserted.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from translators import anthropic, gemini, gemini_code_assist, ollama, openai_chat
from translators import openai_responses
from translators.sse import JsonArrayFraming

ROOT = Path(__file__).resolve().parent.parent.parent
CAPTURES = ROOT / "tests" / "data" / "captures"


def timed(fn, repeat: int, inner: int = 1) -> float:
    """Median seconds of one `fn()` call."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        runs.append((time.perf_counter() - t0) / inner)
    return statistics.median(runs)


def stream_body(events: int) -> bytes:
    chunks = [{"candidates": [{"content": {"role": "model", "parts": [{"text": "token "}]},
                               "index": 0}], "usageMetadata": {"promptTokenCount": 9000},
               "modelVersion": "gemini-2.5-pro", "responseId": "r1"} for _ in range(events)]
    chunks.append({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "run_shell_command", "args": {"command": "ls -la"}},
         "thoughtSignature": "c2lnbmF0dXJl" * 20}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9000, "candidatesTokenCount": events,
                          "thoughtsTokenCount": 40, "totalTokenCount": 9000 + events + 40},
        "modelVersion": "gemini-2.5-pro", "responseId": "r1"})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


def ollama_stream_body(events: int) -> bytes:
    """The same answer as Ollama streams it: a line per text delta, the call, the done line."""
    head = {"model": "qwen3:8b", "created_at": "2025-08-16T21:50:45.146929735Z"}
    lines = [dict(head, message={"role": "assistant", "content": "token "}, done=False)
             for _ in range(events)]
    lines.append(dict(head, message={"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "run_shell_command", "arguments": {"command": "ls -la"}}}]},
        done=False))
    lines.append(dict(head, message={"role": "assistant", "content": ""}, done=True,
                      done_reason="stop", prompt_eval_count=9000, eval_count=events))
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args(argv)

    print("per captured request (median µs)")
    print(f"{'capture':48} {'KB':>5} {'decode':>8} {'->gemini':>9} {'->chat':>8} "
          f"{'->anthropic':>11} {'->responses':>11} {'env decode':>10} {'->ollama':>9} "
          f"{'ollama decode':>13}")
    for path in sorted(CAPTURES.glob("gemini-cli.*.request.json")):
        raw = path.read_bytes()
        body = json.loads(raw)
        req = gemini.decode_request(body)
        env = {"model": "gemini-2.5-pro", "project": "p", "user_prompt_id": "u",
               "request": body}
        figures = [timed(lambda: gemini.decode_request(body), args.repeat, 5),
                   timed(lambda: gemini.encode_request(req), args.repeat, 5),
                   timed(lambda: openai_chat.encode_request(req), args.repeat, 5),
                   timed(lambda: anthropic.encode_request(req), args.repeat, 5),
                   timed(lambda: openai_responses.encode_request(req), args.repeat, 5),
                   timed(lambda: gemini_code_assist.decode_request(env), args.repeat, 5),
                   timed(lambda: ollama.encode_request(req), args.repeat, 5)]
        as_ollama = json.loads(json.dumps(ollama.encode_request(req)))
        figures.append(timed(lambda: ollama.decode_request(as_ollama), args.repeat, 5))
        name = path.name.removeprefix("gemini-cli.").removesuffix(".request.json")
        print(f"{name:48} {len(raw) / 1024:5.1f} " + " ".join(
            f"{f * 1e6:{w}.1f}" for f, w in zip(figures, (8, 9, 8, 11, 11, 10, 9, 13))))

    data = stream_body(args.events)
    events = gemini.StreamDecoder().feed(data)
    n_sse = args.events + 1

    def decode():
        dec = gemini.StreamDecoder()
        dec.feed(data)
        dec.close()

    def encode(module):
        return lambda: module.StreamEncoder().encode_all(events)

    ndjson = ollama_stream_body(args.events)
    n_lines = args.events + 2

    def decode_ollama():
        dec = ollama.StreamDecoder()
        dec.feed(ndjson)
        dec.close()

    print(f"\nper stream event (median µs; {n_sse} Gemini chunks, {len(events)} canonical events)")
    for label, fn, count in (
            ("decode Gemini SSE (per chunk)", decode, n_sse),
            ("encode to Gemini SSE (per canonical event)", encode(gemini), len(events)),
            ("encode to Gemini JSON array (per canonical event)",
             lambda: JsonArrayFraming(gemini.StreamEncoder()).encode_all(events), len(events)),
            ("encode to Code Assist SSE (per canonical event)", encode(gemini_code_assist),
             len(events)),
            ("decode Ollama NDJSON (per line)", decode_ollama, n_lines),
            ("encode to Ollama NDJSON (per canonical event)", encode(ollama), len(events)),
            ("encode to Anthropic SSE (per canonical event)", encode(anthropic), len(events)),
            ("encode to Chat SSE (per canonical event)", encode(openai_chat), len(events))):
        print(f"  {label:52} {timed(fn, args.repeat) / count * 1e6:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
