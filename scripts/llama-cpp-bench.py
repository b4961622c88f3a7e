#!/usr/bin/env python3
"""llama.cpp's speed on the same GGUF file, to set beside `cargo bench --bench decode`.

Measures, through llama-cpp-python (`pip install llama-cpp-python==0.3.36`, which
builds llama.cpp from source), prefill of a 512-token prompt and single-sequence
decode (context 64, as the Rust bench) on 1 and 2 threads, and prints the same
Markdown rows. Run it in the same session as the Rust bench: this machine is shared.

    python3 scripts/llama-cpp-bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import statistics
import time

import llama_cpp


def measure(model, threads, steps):
    llm = llama_cpp.Llama(
        model_path=model, n_ctx=1024, n_batch=512, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )
    prompt = [200 + i % 1000 for i in range(512)]
    runs = []
    for _ in range(2):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        runs.append(len(prompt) / (time.perf_counter() - t))
    prefill = max(runs)
    llm.reset()
    llm.eval([100 + i for i in range(64)])
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        llm.eval([42])
        if i >= 2:
            times.append(time.perf_counter() - t)
    return prefill, 1 / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    print(f"llama-cpp-python {llama_cpp.__version__}\n")
    print("| engine | threads | measurement | tokens/s |")
    print("|---|---|---|---|")
    for threads in (1, 2):
        prefill, decode = measure(args.model, threads, args.steps)
        print(f"| llama.cpp | {threads} | prefill, 512-token prompt | {prefill:.1f} |")
        print(f"| llama.cpp | {threads} | decode, batch 1, context 64 | {decode:.1f} |")


if __name__ == "__main__":
    main()
