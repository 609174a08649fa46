"""The bare script ``bench/e2e.py`` compares groqbatch with: what a careful user writes by hand
on the official ``openai`` SDK to run a JSONL file of rows through a batch API.

    python bench/bare_sdk.py ROWS.jsonl --base-url http://127.0.0.1:8000/openai/v1 \
        --model llama-3.1-8b-instant --lines-per-file 50000 --poll-s 0.5

Split the rows into files of at most ``--lines-per-file`` batch lines, upload each, create a
batch for each, poll until every batch ends, download each output file and parse it into a
dict ``custom_id → answer``. No ledger, no resume, no fallback, no export: the floor.

Prints one JSON line: ``{"rows": …, "answered": …, "errors": …, "batches": …}``. Exits 1 when
a batch did not complete or an answer is missing.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import orjson
from openai import OpenAI

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", help="JSONL input: one object per line with 'id' and 'text'")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines-per-file", type=int, default=50_000)
    parser.add_argument("--max-completion-tokens", type=int, default=16)
    parser.add_argument("--poll-s", type=float, default=0.5)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=os.environ["GROQ_API_KEY"], max_retries=5)

    batch_ids: list[str] = []
    buffer = io.BytesIO()
    lines = rows = 0

    def send() -> None:
        nonlocal buffer, lines
        upload = client.files.create(file=("rows.jsonl", buffer.getvalue()), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        batch_ids.append(batch.id)
        buffer, lines = io.BytesIO(), 0

    with open(args.rows, "rb") as source:
        for raw in source:
            row = orjson.loads(raw)
            body = {"model": args.model,
                    "messages": [{"role": "user", "content": row["text"]}],
                    "max_completion_tokens": args.max_completion_tokens}
            buffer.write(orjson.dumps({"custom_id": str(row["id"]), "method": "POST",
                                       "url": "/v1/chat/completions", "body": body}) + b"\n")
            lines += 1
            rows += 1
            if lines == args.lines_per_file:
                send()
    if lines:
        send()

    answers: dict[str, str] = {}
    errors = 0
    pending = list(batch_ids)
    while pending:
        time.sleep(args.poll_s)
        still = []
        for batch_id in pending:
            batch = client.batches.retrieve(batch_id)
            if batch.status not in TERMINAL:
                still.append(batch_id)
                continue
            if batch.status != "completed":
                print(f"batch {batch_id} ended {batch.status}", file=sys.stderr)
                return 1
            if batch.output_file_id:
                for line in client.files.content(batch.output_file_id).read().splitlines():
                    item = orjson.loads(line)
                    response = item.get("response") or {}
                    if response.get("status_code") == 200:
                        answers[item["custom_id"]] = response["body"]["choices"][0]["message"]["content"]
                    else:
                        errors += 1
            if batch.error_file_id:
                errors += len(client.files.content(batch.error_file_id).read().splitlines())
        pending = still
    print(orjson.dumps({"rows": rows, "answered": len(answers), "errors": errors,
                        "batches": len(batch_ids)}).decode())
    return 0 if len(answers) == rows else 1


if __name__ == "__main__":
    sys.exit(main())
