"""Reference vectors for tests/integration/minilm.rs, from an implementation independent of ours.

all-MiniLM-L6-v2's forward pass written out in numpy from the same model.safetensors that
`scripts/models minilm` installs (tokens from the `tokenizers` package, truncated at 256), then
mean pooling and L2 normalization as sentence-transformers does. Not run by the tests: run it by
hand when the model or the test sentences change, and paste what it prints into the test.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy tokenizers
    echo '["first sentence", "second"]' | /tmp/ref/bin/python tests/reference/minilm_reference.py \
        "$(scripts/models minilm)"
"""
import json
import struct
import sys
from math import erf, sqrt

import numpy as np
from tokenizers import Tokenizer


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        data = raw[8 + n + start : 8 + n + end]
        tensors[name] = np.frombuffer(data, dtype=np.float32).reshape(meta["shape"])
    return tensors


def layer_norm(x, gain, bias, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / sqrt(2))))


def main():
    model_dir = sys.argv[1]
    w = load_safetensors(model_dir + "/model.safetensors")
    cfg = json.load(open(model_dir + "/config.json"))
    tok = Tokenizer.from_file(model_dir + "/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(256)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head = hidden // heads

    def embed(text):
        ids = np.array(tok.encode(text).ids)
        n = len(ids)
        p = "embeddings."
        x = (
            w[p + "word_embeddings.weight"][ids]
            + w[p + "position_embeddings.weight"][:n]
            + w[p + "token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, w[p + "LayerNorm.weight"], w[p + "LayerNorm.bias"])
        for layer in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."

            def linear(t, name):
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def split(t):
                return t.reshape(n, heads, head).transpose(1, 0, 2)

            q = split(linear(x, "attention.self.query"))
            k = split(linear(x, "attention.self.key"))
            v = split(linear(x, "attention.self.value"))
            a = q @ k.transpose(0, 2, 1) / np.sqrt(head)
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(1, 0, 2).reshape(n, hidden)
            x = layer_norm(
                linear(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            h = gelu(linear(x, "intermediate.dense"))
            x = layer_norm(
                linear(h, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
            )
        pooled = x.mean(0)  # one text, no padding: the mean over its tokens
        return pooled / np.linalg.norm(pooled)

    texts = json.load(sys.stdin)
    vectors = [embed(t) for t in texts]
    for t, v in zip(texts, vectors):
        print(json.dumps({"text": t, "first": [round(float(c), 5) for c in v[:4]]}))
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            cos = float(vectors[i] @ vectors[j])
            print(json.dumps({"a": i, "b": j, "cos": round(cos, 4)}))


if __name__ == "__main__":
    main()
