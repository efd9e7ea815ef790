"""Does `mllm serve` answer like the evaluator? Benchmark rows sent through the live OpenAI-compatible API.

Starts the server on loopback with a trained model, posts each row's image (as a base64 data URL) and
benchmark prompt to `/v1/chat/completions` with greedy decoding, scores the replies with the benchmark's own
scorer, and counts how many equal the answers `mllm eval run` wrote for the same rows (its answer files in
`--eval_dir`), so the page and API are shown to serve the model that was evaluated.

    python benchmarks/serve_check.py --model runs/demo/ov2/instruct/model --data runs/demo/world/benchmarks \
        --eval_dir runs/demo/ov2/eval --benchmarks gqa,chartqa,pope --limit 40 \
        --out benchmarks/results/serve_check_demo.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from pathlib import Path

import httpx
from report import report, stamp

from mllm.eval.benchmarks import chance_level, load_rows, row_image
from mllm.eval.metrics import HEADLINE_METRIC, headline, score_benchmark
from mllm.eval.prompts import MAX_NEW_TOKENS, build_prompt
from mllm.serve.chat import ChatSession
from mllm.serve.server import BackgroundServer, ServeConfig, create_app


def data_url(row: dict) -> str:
    buffer = io.BytesIO()
    row_image(row).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def evaluated_answers(eval_dir: Path, name: str) -> dict[tuple[str, str], str]:
    """`mllm eval run`'s answers keyed by (question id, prompt)."""
    lines = (eval_dir / f"{name}.jsonl").read_text().splitlines()
    return {(r["question_id"], r["prompt"]): r["text"] for r in map(json.loads, lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--eval_dir", type=Path, required=True)
    parser.add_argument("--benchmarks", default="gqa,chartqa,pope")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = ServeConfig(model=str(args.model), device="cpu")
    session = ChatSession.load(args.model, "cpu")
    results = {}
    with BackgroundServer(create_app(session, cfg)) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        for name in args.benchmarks.split(","):
            rows = load_rows(args.data, name)[: args.limit]
            docs = [{k: v for k, v in row.items() if k != "image"} for row in rows]
            evaluated = evaluated_answers(args.eval_dir, name)
            replies, same, start = [], 0, time.time()
            for index, (row, doc) in enumerate(zip(rows, docs, strict=True)):
                prompt = build_prompt(name, doc)
                response = client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": data_url(row)}},
                        {"type": "text", "text": prompt}]}],
                    "max_tokens": MAX_NEW_TOKENS[name], "temperature": 0})
                response.raise_for_status()
                reply = response.json()["choices"][0]["message"]["content"].strip()
                replies.append(reply)
                same += reply == evaluated.get((str(row.get("question_id", index)), prompt))
            metrics = score_benchmark(name, docs, replies)
            results[name] = {"rows": len(rows), "headline_metric": HEADLINE_METRIC[name],
                             "headline": round(headline(name, metrics), 2),
                             "chance": round(chance_level(name, docs), 2),
                             "same_as_eval_run": same, "seconds": round(time.time() - start, 1),
                             "examples": [{"prompt": build_prompt(name, d), "reply": r} for d, r in
                                          zip(docs[:3], replies[:3], strict=True)]}
    report({**stamp(), "model": str(args.model), "benchmarks": results}, args.out)


if __name__ == "__main__":
    main()
