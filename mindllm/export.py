"""Export a trained language model to MindIR, the graph format MindSpore's runtimes (and MindSpore Lite) load
without the Python model code: two graphs, prefill and one decoding step with its static KV cache.

    python -m mindllm.export runs/gpt_char_shakespeare                  # -> runs/gpt_char_shakespeare/export/
    python -m mindllm.export runs/llama_char_shakespeare --out exported/llama --batch 4 --force

The folder is self-contained:

    prefill.mindir   idx (B, block) int32 -> logits (B, block, V), k, v       a full (padded) block, as
                                                                               decoding.Decoder.window
    decode.mindir    tok (B, 1) int32, k, v, pos () int32 -> logits (B, 1, V), k, v   one new token at `pos`
    tokenizer.json   a copy of the run's tokenizer
    export.json      block_size, vocab_size, batch, the cache layout, MindSpore's version, SHA-256 of each file

Cache layout: k and v are each one float tensor (n_layer, B * n_kv_head, block_size, head_size), layer i being
forward_cached's per-layer cache, row b * n_kv_head + h holding head h of sequence b (n_kv_head = n_head for GPT).
Shapes are static: a graph runs only on the batch it was exported with (--batch).

Decoding from the folder alone (greedy), in Python:

    from mindllm.export import load_exported, generate_exported
    exported = load_exported("runs/gpt_char_shakespeare/export")
    print(generate_exported(exported, "ROMEO:", 100))

The exported graphs hold the plain MindSpore ops of models/ (the fused CPU kernels of kernels/ are an AOT
library on this machine, not part of a portable graph), so the export is made before anything fuses the model.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from . import device, runs
from .data import load_tokenizer
from .decoding import generate
from .errors import ArgumentParser, UserError, cli
from .files import sha256, write_text_atomic

PREFILL, DECODE, MANIFEST = "prefill.mindir", "decode.mindir", "export.json"
LAYOUT = "k, v: (n_layer, batch * n_kv_head, block_size, head_size); row b * n_kv_head + h = head h of sequence b"
MAX_BATCH = 256
REFUSED = {  # formats MindSpore names but this export does not give, with why (on CPU)
    "air": "MindSpore exports AIR only on Ascend (it needs the Ascend toolchain); this machine runs on CPU",
    "onnx": "MindSpore's ONNX exporter lacks operators these models use (tried on 2.10: 'Exporting Rsqrt operator "
            "is not yet supported')",
}


class Prefill(nn.Cell):
    """A full block -> logits and the filled cache, stacked into two tensors (a MindIR input or output cannot be
    a Python list of (k, v) tuples)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, idx):
        logits, cache = self.model.forward_cached(idx)  # cache: per layer (k, v), each (B*n_kv, block, hs)
        ks, vs = [], []
        for k, v in cache:
            ks.append(k)
            vs.append(v)
        return logits, ops.stack(ks), ops.stack(vs)  # (B, block, V), (L, B*n_kv, block, hs) twice


class DecodeStep(nn.Cell):
    """One new token per row at position `pos`, given the stacked cache -> logits and the updated cache."""

    def __init__(self, model, n_layer: int):
        super().__init__()
        self.model, self.n_layer = model, n_layer

    def construct(self, tok, k, v, pos):
        cache = []
        for i in range(self.n_layer):
            cache.append((k[i], v[i]))
        logits, cache = self.model.forward_cached(tok, cache, pos)  # logits (B, 1, V)
        ks, vs = [], []
        for kk, vv in cache:
            ks.append(kk)
            vs.append(vv)
        return logits, ops.stack(ks), ops.stack(vs)


def sample_window(vocab_size: int, batch: int, block: int, seed: int = 0) -> np.ndarray:
    """(batch, block) int32 token ids to trace the graphs and check them on: any ids of the vocabulary do."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, block)).astype(np.int32)


def _export(cell, inputs, path: str) -> None:
    """mindspore.export to `path` (it appends .mindir to the name itself); its failures become one line."""
    try:
        ms.export(cell, *inputs, file_name=path[:-len(".mindir")], file_format="MINDIR")
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"mindspore.export failed on '{os.path.basename(path)}': {first}") from None


def export_model(model, tokenizer_path: str, out: str, batch: int = 1) -> dict:
    """Write prefill.mindir, decode.mindir, tokenizer.json and export.json into `out`; returns the manifest.
    The manifest is written last: a folder without it is an interrupted export, which load_exported refuses."""
    if any(type(c).__module__.endswith("kernels.fused") for _, c in model.cells_and_names()):
        raise UserError("the model's layers are fused CPU kernels (a library on this machine, not portable in a "
                        "graph); export a model fresh from runs.load_model, before sampling with it")
    model.set_train(False)
    cfg = model.config
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, MANIFEST)):  # --force: until the new one is written, the folder is unfinished
        os.remove(os.path.join(out, MANIFEST))
    idx = Tensor(sample_window(cfg.vocab_size, batch, cfg.block_size))
    prefill = Prefill(model)
    _, k, v = prefill(idx)  # run once: the cache's real shape and dtype, whatever the architecture
    _export(prefill, [idx], os.path.join(out, PREFILL))
    tok, pos = Tensor(np.zeros((batch, 1), np.int32)), Tensor(0, ms.int32)
    _export(DecodeStep(model, k.shape[0]), [tok, k, v, pos], os.path.join(out, DECODE))
    shutil.copyfile(tokenizer_path, os.path.join(out, runs.TOKENIZER))
    files = (PREFILL, DECODE, runs.TOKENIZER)
    manifest = {"format": "MINDIR", "block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "batch": batch,
                "cache_shape": list(k.shape), "cache_dtype": str(k.dtype), "cache_layout": LAYOUT,
                "arch": type(model).__name__, "tokenizer": runs.TOKENIZER, "mindspore": ms.__version__,
                "sha256": {name: sha256(os.path.join(out, name)) for name in files}}
    write_text_atomic(os.path.join(out, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return manifest


class Exported:
    """The two exported graphs reloaded (mindspore.load + nn.GraphCell), with the manifest and tokenizer."""

    def __init__(self, folder: str):
        path = os.path.join(folder, MANIFEST)
        try:
            with open(path, encoding="utf-8") as fh:
                self.manifest = json.load(fh)
        except FileNotFoundError:
            raise UserError(f"'{folder}' has no {MANIFEST}: not a finished export (run python -m mindllm.export "
                            f"RUN --out {folder} --force)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"'{path}' is corrupt (not JSON); export again with --force") from None
        for name, digest in self.manifest["sha256"].items():  # a stale or damaged graph must not run silently
            file = os.path.join(folder, name)
            if not os.path.isfile(file) or sha256(file) != digest:
                raise UserError(f"'{file}' is missing or is not the file {MANIFEST} records (SHA-256 differs); "
                                f"export again with --force")
        self.block, self.batch = self.manifest["block_size"], self.manifest["batch"]
        self.tokenizer = load_tokenizer(os.path.join(folder, self.manifest["tokenizer"]))
        self.prefill = nn.GraphCell(ms.load(os.path.join(folder, PREFILL)))
        self.decode = nn.GraphCell(ms.load(os.path.join(folder, DECODE)))

    def window(self, idx):
        """(B, block) int32 -> (logits (B, block, V) numpy, k, v Tensors)."""
        logits, k, v = self.prefill(Tensor(np.asarray(idx, np.int32)))
        return logits.asnumpy(), k, v

    def step(self, tok, k, v, pos: int):
        """(B,) int32 new tokens at position pos -> (logits (B, V) numpy, k, v)."""
        logits, k, v = self.decode(Tensor(np.asarray(tok, np.int32).reshape(-1, 1)), k, v, Tensor(pos, ms.int32))
        return logits.asnumpy()[:, 0], k, v


def load_exported(folder: str) -> Exported:
    return Exported(folder)


def exported_tokens(exported: Exported, idx, max_new_tokens: int) -> np.ndarray:
    """Greedy continuation of idx (B, T) by the exported graphs -> (B, T + max_new_tokens), the schedule of
    decoding.tokens: a padded window fills the cache, then one step per token; once the cache is full the
    window slides and is re-encoded, so the tokens equal the model's own greedy ones."""
    idx, block = np.asarray(idx, np.int32), exported.block
    if idx.ndim != 2 or idx.shape[0] != exported.batch or idx.shape[1] == 0:
        raise UserError(f"token ids of shape {idx.shape}: the export takes (batch={exported.batch}, T >= 1)")
    k = v = None
    pos = 0
    for _ in range(max_new_tokens):
        if k is None or pos >= block:
            win = idx[:, -block:]
            logits, k, v = exported.window(np.pad(win, ((0, 0), (0, block - win.shape[1]))))
            logits, pos = logits[:, win.shape[1] - 1], win.shape[1]
        else:
            logits, k, v = exported.step(idx[:, -1], k, v, pos)
            pos += 1
        idx = np.concatenate([idx, logits.argmax(-1).astype(np.int32)[:, None]], axis=1)
    return idx


def generate_exported(exported: Exported, prompt, max_new_tokens: int):
    """Greedy decoding from the exported files alone: a str prompt gives the new text (each row the same
    prompt), token ids (T,) or (B, T) give the ids with the new ones appended."""
    if isinstance(prompt, str):
        ids = np.tile(np.array(exported.tokenizer.encode(prompt)[-exported.block:], np.int32), (exported.batch, 1))
        return exported.tokenizer.decode(exported_tokens(exported, ids, max_new_tokens)[0, ids.shape[1]:])
    ids = np.asarray(prompt, np.int32)
    out = exported_tokens(exported, ids[None] if ids.ndim == 1 else ids, max_new_tokens)
    return out[0] if ids.ndim == 1 else out


def check(model, exported: Exported, new_tokens: int = 20) -> tuple[float, bool]:
    """(max |logit difference| between the exported prefill and model.construct on a sample window, whether
    greedy decoding from the exported graphs gives decoding.generate's tokens for `new_tokens` tokens, past
    the block when the prompt is long enough). Run after the export: generate fuses the model's layers."""
    block, batch = exported.block, exported.batch
    idx = sample_window(model.config.vocab_size, batch, block, seed=1)
    diff = float(np.abs(exported.window(idx)[0] - model(Tensor(idx)).asnumpy()).max())
    prompt = idx[:, :max(1, block // 4)]
    want = generate(model, prompt, new_tokens, temperature=0)
    return diff, bool(np.array_equal(exported_tokens(exported, prompt, new_tokens), want))


def size_text(path: str) -> str:
    n = os.path.getsize(path)
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def build_parser():
    ap = ArgumentParser(prog="python -m mindllm.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", metavar="RUN", help="training out_dir (its latest checkpoint) or a ckpt/step_* dir")
    ap.add_argument("--format", default="mindir", choices=["mindir", *REFUSED], help="mindir (default)")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: RUN/export)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per call; the graphs' shapes are static")
    ap.add_argument("--force", action="store_true", help="write into --out even if it exists")
    return ap


def check_args(args) -> str:
    """The output folder, after refusing what cannot be exported."""
    if args.format in REFUSED:
        raise UserError(f"--format {args.format}: {REFUSED[args.format]}; use --format mindir")
    if not 1 <= args.batch <= MAX_BATCH:
        raise UserError(f"--batch must be in 1..{MAX_BATCH}")
    run_dir, _ = runs.locate(args.run)
    out = args.out or os.path.join(run_dir, "export")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out '{out}' is a file; give a folder")
    if os.path.exists(out) and not args.force:
        raise UserError(f"'{out}' exists; add --force to overwrite its export, or give another --out")
    return out


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = check_args(args)
    device.setup(device.context_for("CPU"), 0)
    model, _, _ = runs.load_model(args.run)
    run_dir, _ = runs.locate(args.run)
    try:
        manifest = export_model(model, os.path.join(run_dir, runs.TOKENIZER), out, args.batch)
    except OSError as e:
        raise UserError(f"cannot write into '{out}' ({e.strerror})") from None
    for name in (PREFILL, DECODE, runs.TOKENIZER, MANIFEST):
        print(f"wrote {os.path.join(out, name)} ({size_text(os.path.join(out, name))})")
    diff, same = check(model, load_exported(out))
    print(f"check: max |logit difference| {diff:.2e} (exported prefill vs the trained model, batch "
          f"{manifest['batch']} x {manifest['block_size']} tokens); greedy tokens equal: {'yes' if same else 'NO'}")
    if not same:
        print("warning: the exported decoding differs from the model's own; do not ship this export",
              file=sys.stderr)
    return manifest


if __name__ == "__main__":
    main()
