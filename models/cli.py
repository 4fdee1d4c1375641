"""The `scaling generate` command: continue a prompt with the newest checkpoint of a trained run.

    scaling generate runs/adhoc/run --prompt "def main(" --max-new-tokens 200 --temperature 0.8 --top-p 0.95

The prompt is encoded with the run's own tokenizer, read once by a prefill call, and continued one token at a
time from the KV cache until the end-of-document token, `--max-new-tokens`, or a full cache. `--json` prints
the text with timings instead.
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_parsers(subparsers) -> None:
    """Register `generate` on the `scaling` command's subparsers."""
    generate = subparsers.add_parser(
        "generate", help="continue a prompt with a trained run's newest checkpoint (KV-cache decoding)"
    )
    generate.add_argument("run_dir", metavar="RUN_DIR", help="run folder RUNS/<sweep>/<run_id> with config.json and checkpoints/")
    generate.add_argument("--prompt", required=True, help="text to continue; an empty prompt starts a new document")
    generate.add_argument("--max-new-tokens", type=int, required=True, metavar="N", help="tokens to generate at most")
    generate.add_argument("--temperature", type=float, default=1.0, help="divides the logits; 0 is greedy (default 1.0)")
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 keeps all")
    generate.add_argument("--top-p", type=float, default=1.0,
                          help="sample among the most likely tokens whose probability reaches p; 1 keeps all")
    generate.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    generate.add_argument("--cache-len", type=int, metavar="SLOTS",
                          help="KV cache slots for prompt plus new tokens (default: the model's max_seq_len)")
    generate.add_argument("--no-stop", action="store_true", help="keep going past the end-of-document token")
    generate.add_argument("--json", action="store_true", help="print a JSON object with the text and timings")
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Restore the run, generate, and print the continuation (or JSON); return the exit status."""
    from models.generate import Generator, Sampling
    from scaling.errors import UserError
    from scaling.restore import load_trained_run

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    run = load_trained_run(args.run_dir)
    model = run.config.model
    cache_len = args.cache_len if args.cache_len is not None else model.max_seq_len
    if cache_len < 1:
        raise UserError(f"--cache-len={cache_len} must be a positive number of slots")

    tokenizer = run.tokenizer
    prompt_ids = [int(t) for t in tokenizer.encode(args.prompt)] or [tokenizer.eot_id]
    if len(prompt_ids) >= cache_len:
        raise UserError(
            f"the prompt is {len(prompt_ids)} tokens but the KV cache has {cache_len} slots, leaving no room to "
            "generate; shorten the prompt or raise --cache-len"
        )
    stop_tokens = [] if args.no_stop else [tokenizer.eot_id]

    generator = Generator(model, run.params, cache_len)
    result = generator.generate([prompt_ids], args.max_new_tokens, sampling, stop_tokens)
    continuation = tokenizer.decode(result.tokens[0])
    reason = result.stop_reasons[0]

    if args.json:
        print(json.dumps({
            "run_dir": str(run.path),
            "checkpoint_step": run.step,
            "prompt": args.prompt,
            "continuation": continuation,
            "prompt_tokens": len(prompt_ids),
            "new_tokens": len(result.tokens[0]),
            "stop_reason": reason,
            "cache_len": cache_len,
            "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                         "seed": sampling.seed},
            "prefill_ms": 1000 * result.prefill_s,
            "decode_ms": 1000 * result.decode_s,
            "tokens_per_s": result.tokens_per_s,
            "compile_s": result.compile_s,
        }, indent=2))
    else:
        print(continuation)
    if reason == "cache_full":
        log.warning(
            "generation stopped after %d tokens: the KV cache of %d slots is full; raise --cache-len "
            "(RoPE models only, beyond the trained max_seq_len=%d quality may drop)",
            len(result.tokens[0]), cache_len, model.max_seq_len,
        )
    return 0
