#!/usr/bin/env python3
"""Greedy tokens of SmolLM2 from llama.cpp itself (through llama-cpp-python), the
reference of tokenflow's `q8` numerics, which quantizes activations to 8-bit
blocks and takes integer dot products as llama.cpp's CPU kernels do.

For each prompt of `tests/fixtures/smollm2_greedy.json` (the numpy reference's
prompts, token ids included), runs llama.cpp greedily for `--tokens` steps and
records each chosen token, the five largest logits and the margin between
llama.cpp's top two logits at that step: where the margin is small, two correct implementations that round
differently may choose differently, so the Rust test compares tokens up to the
first such step only.

    pip install llama-cpp-python==0.3.36 numpy
    python3 tests/reference/llama_cpp_reference.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/fixtures/smollm2_llama_cpp.json
"""

import argparse
import hashlib
import json
import pathlib

import llama_cpp
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", default="tests/fixtures/smollm2_greedy.json")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    sha = hashlib.sha256(pathlib.Path(args.model).read_bytes()).hexdigest()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=512,
        n_batch=512,
        n_threads=args.threads,
        logits_all=True,
        verbose=False,
    )
    prompts = json.loads(pathlib.Path(args.prompts).read_text())["prompts"]
    out = []
    for p in prompts:
        llm.reset()
        llm.eval(p["prompt_ids"])
        tokens, margins, top5 = [], [], []
        for _ in range(args.tokens):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits)
            tokens.append(int(order[0]))
            margins.append(float(logits[order[0]] - logits[order[1]]))
            top5.append([[int(i), float(logits[i])] for i in order[:5]])
            llm.eval([int(order[0])])
        out.append(
            {
                "name": p["name"],
                "prompt_ids": p["prompt_ids"],
                "tokens": tokens,
                "margins": margins,
                "top5": top5,
            }
        )
        print(p["name"], repr(llm.detokenize(tokens).decode("utf-8", "replace"))[:80])
    pathlib.Path(args.out).write_text(
        json.dumps(
            {
                "model_sha256": sha,
                "generator": f"llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, CPU",
                "prompts": out,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
