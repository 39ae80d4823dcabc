"""python -m mindllm.quant RUN --bits 8 --scheme per_channel --out RUN_q8: write a quantized copy of a trained run.

The copy is a run directory like any other (config.yaml, tokenizer.json, ckpt/), its checkpoint holding int8 or
int4 codes and scales (quant/layers.py); its state.json records the scheme, so `python -m mindllm.sample`,
`mindllm.serve`, `mindllm.eval` and `runs.load_model` open it as they open the float run.

    python -m mindllm.quant runs/gpt --bits 8 --scheme per_channel --out runs/gpt_q8
    python -m mindllm.quant runs/gpt --bits 4 --scheme group --group-size 32 --out runs/gpt_q4
"""
from __future__ import annotations

import os

from .. import device, runs
from ..checkpoint import read_state
from ..errors import ArgumentParser, UserError, cli
from .files import size, write_run
from .layers import SCHEMES, check_spec, quantize_weights


def build_parser():
    ap = ArgumentParser(prog="python -m mindllm.quant", description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a trained run (its out_dir, or one ckpt/step_* directory)")
    ap.add_argument("--bits", type=int, default=8, help="8 (int8) or 4 (int4, with --scheme group)")
    ap.add_argument("--scheme", default="per_channel", help=f"one of {', '.join(SCHEMES)}")
    ap.add_argument("--group-size", type=int, default=32, help="--scheme group: inputs sharing one scale")
    ap.add_argument("--asymmetric", action="store_true", help="a zero point per block (default: absmax, zero = 0)")
    ap.add_argument("--out", required=True, help="the quantized run's directory (new)")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    return ap


def check_paths(args) -> tuple[str, str, dict]:
    """(run dir, checkpoint dir, its state) of the float run; refuses a quantized run, a run with LoRA adapters and
    an --out that would overwrite, before anything is loaded."""
    run_dir, ckpt = runs.locate(args.run)
    state = read_state(ckpt)
    if state.get("quant"):
        q = state["quant"]
        raise UserError(f"'{args.run}' is already quantized ({q['bits']}-bit {q['scheme']}); quantize the float run "
                        f"it was made from ({state.get('quantized_from', 'its source')})")
    if runs.read_config(run_dir).peft.method == "lora":
        raise UserError(f"'{args.run}' trains LoRA adapters beside frozen weights; quantize a run without them "
                        f"(peft.method=none) or its base run")
    if os.path.abspath(args.out) == os.path.abspath(run_dir):
        raise UserError("--out is the run itself; give a new directory (the float run is kept)")
    if os.path.exists(args.out) and not args.force:
        raise UserError(f"--out '{args.out}' exists; choose a new directory or add --force to replace it")
    return run_dir, ckpt, state


def main(argv=None):
    args = build_parser().parse_args(argv)
    spec = {"bits": args.bits, "scheme": args.scheme, "group_size": args.group_size if args.scheme == "group" else 0,
            "symmetric": not args.asymmetric}
    check_spec(spec)
    run_dir, ckpt, state = check_paths(args)
    device.setup(device.context_for("CPU"), 0)
    task, _ = runs.load_trained(args.run)
    stats = quantize_weights(task.model, spec)
    if not stats:
        raise UserError(f"'{args.run}' has no Linear layers to quantize")
    saved = write_run(args.out, run_dir, task.model, {"step": state.get("step", 0), "quant": spec,
                                                      "quantized_from": os.path.abspath(ckpt)})
    worst = max(s["rel_error"] for s in stats.values())
    print(f"{len(stats)} Linear layers -> {args.bits}-bit {args.scheme}"
          f"{' (zero point)' if args.asymmetric else ''}; relative weight error ≤ {worst:.2%}")
    print(f"model.safetensors {size(ckpt) / 2**20:.2f} MiB -> {size(saved) / 2**20:.2f} MiB "
          f"({size(ckpt) / size(saved):.1f}x smaller); wrote {args.out}")
    print(f"try: python -m mindllm.sample --ckpt {args.out}")


main = cli(main)

if __name__ == "__main__":
    main()
