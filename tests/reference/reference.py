#!/usr/bin/env python3
"""Independent numpy (float32) reference for tokenflow.

Generates the JSON fixtures that the Rust tests compare against:

  smollm2_greedy.json    greedy continuations (48 tokens) + top-5 logits per step
  tokenizer_cases.json   byte-level BPE encodings of assorted strings
  dequant_cases.json     raw quant blocks + their gguf.quants dequantization
  smollm2_tensors.json   summary statistics of a few real model tensors

Usage:
  python3 tests/reference/reference.py \
      --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures

Deliberately independent of llama.cpp's layout choices: the attention Q/K
weights are un-permuted back to Hugging Face layout and RoPE is applied the HF
way (rotate_half).  The tokenizer is a from-scratch byte-level BPE (no HF
`tokenizers`).  Only `gguf` (file parsing + dequantization), `numpy` and
`regex` are used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from functools import lru_cache

import numpy as np
import regex

import gguf
from gguf import GGMLQuantizationType as QT

F32 = np.float32

CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
)

PROMPTS = [
    ("capital_of_france", True, "What is the capital of France?"),
    ("poem_about_sea", True, "Write a short poem about the sea."),
    ("explain_transformer", True, "Explain what a transformer neural network is in two sentences."),
    ("quick_brown_fox", False, "The quick brown fox"),
    ("def_fibonacci", False, "def fibonacci(n):\n"),
    ("once_upon_a_time", False, "Once upon a time, in a village far away,"),
]

N_GEN = 48
SMALL_MARGIN = 0.01
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# --------------------------------------------------------------------------
# GGUF helpers
# --------------------------------------------------------------------------

def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def dequant_tensor(t) -> np.ndarray:
    """Dequantize a GGUF tensor to a float32 array with numpy (row-major) shape
    = reversed(ne).  For a 2-D weight with ne=[in, out] that is [out, in]."""
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(x) for x in reversed(list(t.shape)))
    return np.ascontiguousarray(w.reshape(shape), dtype=F32)


# --------------------------------------------------------------------------
# Tokenizer: byte-level BPE written from scratch
# --------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


GPT2_PAT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
DIGIT_PAT = regex.compile(r"\p{N}")


class Tokenizer:
    def __init__(self, tokens: list[str], token_types: list[int], merges: list[str]):
        self.tokens = tokens
        self.token_types = token_types
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks: dict[tuple[str, str], int] = {}
        for i, m in enumerate(merges):
            a, b = m.split(" ")
            self.ranks[(a, b)] = i
        self.b2u = bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        # control / special tokens (type 3) are matched literally, never BPE'd
        self.special = {t: i for i, t in enumerate(tokens) if token_types[i] == 3}
        alts = sorted(self.special, key=len, reverse=True)
        self.special_pat = regex.compile("(" + "|".join(regex.escape(s) for s in alts) + ")") if alts else None
        self._cache: dict[str, list[int]] = {}

    # -- pre-tokenization ("smollm"): digits isolated, then GPT-2 regex --
    @staticmethod
    def pretokenize(text: str) -> list[str]:
        pieces: list[str] = []
        last = 0
        chunks: list[str] = []
        for m in DIGIT_PAT.finditer(text):
            if m.start() > last:
                chunks.append(text[last:m.start()])
            chunks.append(m.group())
            last = m.end()
        if last < len(text):
            chunks.append(text[last:])
        for c in chunks:
            pieces.extend(GPT2_PAT.findall(c))
        return pieces

    def bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        syms = list(word)
        while len(syms) > 1:
            best = None
            best_rank = None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, (syms[i], syms[i + 1])
            if best is None:
                break
            out = []
            i = 0
            while i < len(syms):
                if i < len(syms) - 1 and syms[i] == best[0] and syms[i + 1] == best[1]:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        ids = []
        for s in syms:
            if s not in self.vocab:
                raise KeyError(f"symbol {s!r} not in vocab")
            ids.append(self.vocab[s])
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        parts = self.special_pat.split(text) if self.special_pat else [text]
        for k, part in enumerate(parts):
            if not part:
                continue
            if k % 2 == 1:  # captured special token
                ids.append(self.special[part])
                continue
            for piece in self.pretokenize(part):
                mapped = "".join(self.b2u[b] for b in piece.encode("utf-8"))
                ids.extend(self.bpe(mapped))
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        out = bytearray()
        for i in ids:
            t = self.tokens[i]
            if self.token_types[i] == 3:
                out += t.encode("utf-8")
            else:
                out += bytes(self.u2b[c] for c in t)
        return bytes(out)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# Llama forward pass (HF layout, float32)
# --------------------------------------------------------------------------

def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's `permute`:
        gguf = hf.reshape(n_head, 2, hd//2, in).swapaxes(1, 2).reshape(out, in)
    so  hf = gguf.reshape(n_head, hd//2, 2, in).swapaxes(1, 2).reshape(out, in)."""
    out, inp = w.shape
    hd = out // n_head
    return np.ascontiguousarray(
        w.reshape(n_head, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp))


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's forward permute (used only for the --qk-layout
    sanity experiment)."""
    out, inp = w.shape
    hd = out // n_head
    return np.ascontiguousarray(
        w.reshape(n_head, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp))


def rms_norm(x: np.ndarray, w: np.ndarray, eps: np.float32) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
    return (x / np.sqrt(ms + eps)).astype(F32) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1) + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True, dtype=F32)


def rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


class Llama:
    def __init__(self, reader: gguf.GGUFReader, qk_layout: str = "unpermute"):
        arch = field(reader, "general.architecture")
        assert arch == "llama", arch
        self.n_layer = int(field(reader, "llama.block_count"))
        self.n_embd = int(field(reader, "llama.embedding_length"))
        self.n_head = int(field(reader, "llama.attention.head_count"))
        self.n_kv = int(field(reader, "llama.attention.head_count_kv"))
        self.hd = self.n_embd // self.n_head
        self.eps = F32(field(reader, "llama.attention.layer_norm_rms_epsilon"))
        self.base = F32(field(reader, "llama.rope.freq_base"))
        t = {x.name: x for x in reader.tensors}
        assert "output.weight" not in t  # tied embeddings
        self.tok_embd = dequant_tensor(t["token_embd.weight"])  # [vocab, n_embd]
        self.out_norm = dequant_tensor(t["output_norm.weight"])
        fix = {"unpermute": unpermute_qk, "permute": permute_qk, "none": lambda w, n: w}[qk_layout]
        self.layers = []
        for i in range(self.n_layer):
            g = lambda n: dequant_tensor(t[f"blk.{i}.{n}.weight"])
            self.layers.append(dict(
                attn_norm=g("attn_norm"),
                wq=fix(g("attn_q"), self.n_head),
                wk=fix(g("attn_k"), self.n_kv),
                wv=g("attn_v"),
                wo=g("attn_output"),
                ffn_norm=g("ffn_norm"),
                wg=g("ffn_gate"),
                wu=g("ffn_up"),
                wd=g("ffn_down"),
            ))
        # HF: inv_freq = 1 / base^(arange(0, d, 2)/d), in float32
        self.inv_freq = (F32(1) / (self.base ** (np.arange(0, self.hd, 2, dtype=F32) / F32(self.hd)))).astype(F32)
        self.reset()

    def reset(self):
        self.k_cache = [np.zeros((self.n_kv, 0, self.hd), F32) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((self.n_kv, 0, self.hd), F32) for _ in range(self.n_layer)]
        self.pos = 0

    def rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # x: [heads, T, hd]
        freqs = positions.astype(F32)[:, None] * self.inv_freq[None, :]  # [T, hd/2]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb).astype(F32), np.sin(emb).astype(F32)
        return x * cos[None] + rotate_half(x) * sin[None]

    def forward(self, ids: list[int]) -> np.ndarray:
        """Process `ids` at positions pos..pos+T-1, append to the KV cache and
        return logits [T, vocab] (float32)."""
        T = len(ids)
        positions = np.arange(self.pos, self.pos + T)
        x = self.tok_embd[np.asarray(ids)]  # [T, n_embd]
        group = self.n_head // self.n_kv
        scale = F32(1.0 / np.sqrt(self.hd))
        S = self.pos + T
        # causal mask: query t (absolute pos+t) may see keys 0..pos+t
        mask = np.where(np.arange(S)[None, :] <= positions[:, None], F32(0), F32(-np.inf)).astype(F32)
        for li, L in enumerate(self.layers):
            h = rms_norm(x, L["attn_norm"], self.eps)
            q = (h @ L["wq"].T).reshape(T, self.n_head, self.hd).transpose(1, 0, 2)
            k = (h @ L["wk"].T).reshape(T, self.n_kv, self.hd).transpose(1, 0, 2)
            v = (h @ L["wv"].T).reshape(T, self.n_kv, self.hd).transpose(1, 0, 2)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            K = np.concatenate([self.k_cache[li], k], axis=1)
            V = np.concatenate([self.v_cache[li], v], axis=1)
            self.k_cache[li], self.v_cache[li] = K, V
            out = np.empty((self.n_head, T, self.hd), F32)
            for hh in range(self.n_head):
                kv = hh // group
                sc = (q[hh] @ K[kv].T) * scale + mask  # [T, S]
                out[hh] = softmax(sc) @ V[kv]
            attn = out.transpose(1, 0, 2).reshape(T, self.n_embd)
            x = x + attn @ L["wo"].T
            h = rms_norm(x, L["ffn_norm"], self.eps)
            ff = (silu(h @ L["wg"].T) * (h @ L["wu"].T)) @ L["wd"].T
            x = x + ff
            assert x.dtype == F32
        self.pos += T
        h = rms_norm(x, self.out_norm, self.eps)
        return (h @ self.tok_embd.T).astype(F32)


def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    # stable: sort by logit desc, then by id asc
    idx = np.lexsort((np.arange(len(logits)), -logits))[:k]
    return [(int(i), float(logits[i])) for i in idx]


def greedy(model: Llama, prompt_ids: list[int], n: int):
    model.reset()
    logits = model.forward(prompt_ids)[-1]
    tokens, top5s, margins = [], [], []
    for step in range(n):
        tk = top_k(logits, 5)
        nxt = tk[0][0]
        tokens.append(nxt)
        top5s.append([[i, l] for i, l in tk])
        margins.append(float(F32(tk[0][1]) - F32(tk[1][1])))
        if step + 1 < n:
            logits = model.forward([nxt])[-1]
    return tokens, top5s, margins


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

TOKENIZER_CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "12345",
    "3.14159",
    "in 2024 we",
    "fn main() {\n    println!(\"hi\");\n}",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)\n",
    "Wait... what?!?! (yes) [no] {maybe} --> ===",
    "café naïve résumé",
    "Grüße aus München, schöne Straße",
    "L'été dernier, nous sommes allés à Paris.",
    "你好，世界",
    "日本語のテキスト",
    "🦀 rust 🚀",
    "👨‍👩‍👧",
    "   hello",
    "a  b   c  ",
    "\n\n\tindent",
    "don't we'll I'm they've she'd it's you're",
    "",
    " ",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "x<|endoftext|>y<|im_end|><|im_start|>",
    "$1,000,000.00 and 50% off",
]


def f16_scales(rng, n):
    return rng.uniform(-0.1, 0.1, size=n).astype(np.float16)


def make_quant_blocks(qtype: QT, rng) -> np.ndarray:
    """Return uint8 array [n_blocks, type_size] of valid blocks."""
    blk, tsz = gguf.constants.GGML_QUANT_SIZES[qtype]
    layouts = {
        # name: (n_blocks, expected size, [(offset, n_f16)] scale fields)
        QT.Q8_0: (8, 34, [0]),
        QT.Q4_0: (8, 18, [0]),
        QT.Q4_1: (8, 20, [0, 2]),
        QT.Q4_K: (4, 144, [0, 2]),
        QT.Q5_K: (4, 176, [0, 2]),
        QT.Q6_K: (4, 210, [208]),
    }
    nb, expect, offs = layouts[qtype]
    assert tsz == expect, (qtype, tsz, expect)
    raw = rng.integers(0, 256, size=(nb, tsz), dtype=np.uint8)
    for off in offs:
        raw[:, off:off + 2] = f16_scales(rng, nb).view(np.uint8).reshape(nb, 2)
    return raw


def dequant_cases() -> list[dict]:
    cases = []
    seed = 1234
    for qtype in [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q5_K, QT.Q6_K]:
        rng = np.random.default_rng(seed)
        seed += 1
        if qtype == QT.F32:
            raw = rng.standard_normal(64).astype(F32).view(np.uint8)
        elif qtype == QT.F16:
            raw = rng.standard_normal(64).astype(np.float16).view(np.uint8)
        elif qtype == QT.BF16:
            f = rng.standard_normal(64).astype(F32).view(np.uint32)
            raw = (f >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = make_quant_blocks(qtype, rng).reshape(-1)
        blk, tsz = gguf.constants.GGML_QUANT_SIZES[qtype]
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        n = raw.size // tsz * blk
        vals = gguf.quants.dequantize(raw.reshape(-1, tsz) if blk > 1 else raw, qtype)
        vals = np.asarray(vals, dtype=F32).reshape(-1)
        assert vals.size == n and np.all(np.isfinite(vals)), qtype
        cases.append({
            "type": qtype.name,
            "ggml_type": int(qtype),
            "n_elements": int(n),
            "bytes_hex": raw.tobytes().hex(),
            "values": [float(v) for v in vals],
        })
    return cases


def tensor_cases(reader) -> list[dict]:
    t = {x.name: x for x in reader.tensors}
    out = []
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight",
                 "blk.29.attn_v.weight", "blk.0.attn_norm.weight", "output_norm.weight"]:
        tt = t[name]
        w = np.asarray(gguf.quants.dequantize(tt.data, tt.tensor_type), dtype=F32).reshape(-1)
        out.append({
            "name": name,
            "type": tt.tensor_type.name,
            "ne": [int(x) for x in tt.shape],
            "first": [float(v) for v in w[:256]],
            "sum": float(np.sum(w, dtype=np.float64)),
            "sum_sq": float(np.sum(w.astype(np.float64) ** 2)),
        })
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--qk-layout", default="unpermute", choices=["unpermute", "permute", "none"],
                    help="debug only: how to map GGUF attn_q/attn_k rows to HF layout")
    ap.add_argument("--only-prompt", type=int, default=None, help="debug: run a single prompt, write nothing")
    args = ap.parse_args()
    t0 = time.time()

    sha = sha256_file(args.model)
    if sha != MODEL_SHA256:
        print(f"warning: model sha256 {sha} != expected {MODEL_SHA256}", file=sys.stderr)
    reader = gguf.GGUFReader(args.model)
    tok = Tokenizer(list(field(reader, "tokenizer.ggml.tokens")),
                    [int(x) for x in field(reader, "tokenizer.ggml.token_type")],
                    list(field(reader, "tokenizer.ggml.merges")))
    assert field(reader, "tokenizer.ggml.pre") == "smollm"
    assert not field(reader, "tokenizer.ggml.add_bos_token")

    model = Llama(reader, args.qk_layout)
    print(f"loaded model in {time.time() - t0:.1f}s")

    if args.only_prompt is not None:
        name, chat, p = PROMPTS[args.only_prompt]
        text = CHAT_TEMPLATE.replace("{PROMPT}", p) if chat else p
        toks, _, margins = greedy(model, tok.encode(text), N_GEN)
        print(repr(tok.decode(toks)))
        return 0

    os.makedirs(args.out, exist_ok=True)

    # tokenizer
    tcases = []
    for s in TOKENIZER_CASES:
        ids = tok.encode(s)
        back = tok.decode(ids)
        assert back == s, (s, ids, back)
        tcases.append({"text": s, "ids": ids})
    write_json(os.path.join(args.out, "tokenizer_cases.json"), tcases)

    write_json(os.path.join(args.out, "dequant_cases.json"), dequant_cases())
    write_json(os.path.join(args.out, "smollm2_tensors.json"), tensor_cases(reader))

    # greedy generation
    results = []
    for name, chat, p in PROMPTS:
        ts = time.time()
        text = CHAT_TEMPLATE.replace("{PROMPT}", p) if chat else p
        prompt_ids = tok.encode(text)
        assert tok.decode(prompt_ids) == text
        toks, top5s, margins = greedy(model, prompt_ids, N_GEN)
        small = next((i for i, m in enumerate(margins) if m < SMALL_MARGIN), None)
        dec = tok.decode(toks)
        results.append({
            "name": name,
            "chat": chat,
            "prompt": p,
            "text": text,
            "prompt_ids": prompt_ids,
            "tokens": toks,
            "top5": top5s,
            "margins": margins,
            "first_small_margin_step": small,
            "decoded": dec,
        })
        print(f"[{name}] {time.time() - ts:.1f}s first_small_margin_step={small}\n  {dec!r}")
    write_json(os.path.join(args.out, "smollm2_greedy.json"), {
        "model_sha256": MODEL_SHA256,
        "generator": "tests/reference/reference.py (numpy f32)",
        "prompts": results,
    })
    print(f"total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
