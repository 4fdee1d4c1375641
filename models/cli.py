"""The `scaling generate` command: continue a prompt with the newest checkpoint of a trained run.

    scaling generate runs/adhoc/run --prompt "def main(" --max-new-tokens 200 --temperature 0.8 --top-p 0.95

The prompt is encoded with the run's own tokenizer, read once by a prefill call, and continued one token at a
time from the KV cache until the end-of-document token, `--max-new-tokens`, or a full cache. It prints the
prompt followed by its continuation (`--continuation-only` prints the new text alone); `--json` prints both
with timings instead.
"""

from __future__ import annotations

import argparse
import json
import logging

from scaling.numbers import whole_number

log = logging.getLogger(__name__)


def add_parsers(subparsers) -> None:
    """Register `generate` on the `scaling` command's subparsers."""
    generate = subparsers.add_parser(
        "generate", help="continue a prompt with a trained run's newest checkpoint (KV-cache decoding)"
    )
    generate.add_argument("run_dir", metavar="RUN_DIR", help="run folder RUNS/<sweep>/<run_id> with config.json and checkpoints/")
    generate.add_argument("--prompt", required=True, help="text to continue; an empty prompt starts a new document")
    generate.add_argument("--max-new-tokens", type=whole_number, required=True, metavar="N", help="tokens to generate at most")
    generate.add_argument("--temperature", type=float, default=1.0, help="divides the logits; 0 is greedy (default 1.0)")
    generate.add_argument("--top-k", type=whole_number, default=0, help="sample among the k most likely tokens; 0 keeps all")
    generate.add_argument("--top-p", type=float, default=1.0,
                          help="sample among the most likely tokens whose probability reaches p; 1 keeps all")
    generate.add_argument("--seed", type=whole_number, default=0, help="seed of the random draws (default 0)")
    generate.add_argument("--cache-len", type=whole_number, metavar="SLOTS",
                          help="KV cache slots for prompt plus new tokens (default: the model's max_seq_len)")
    generate.add_argument("--no-stop", action="store_true", help="keep going past the end-of-document token")
    generate.add_argument("--continuation-only", action="store_true",
                          help="print only the generated text, without the prompt before it")
    generate.add_argument("--json", action="store_true", help="print a JSON object with the text and timings")
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Restore the run, generate, and print prompt and continuation (or JSON); return the exit status."""
    from models.generate import Generator, Sampling
    from models.kv_cache import check_cache_fits, check_cache_length
    from scaling.errors import UserError
    from scaling.restore import load_trained_run

    try:
        sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except UserError as error:  # named as the field ("top_p=2.0"); on the command line it is the option
        message = str(error)
        for field_name in ("temperature", "top_k", "top_p", "seed"):
            if message.startswith(f"{field_name}="):
                message = f"--{field_name.replace('_', '-')} {message[len(field_name) + 1:]}"
        raise UserError(message) from None
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.cache_len is not None and args.cache_len < 1:
        raise UserError(f"--cache-len={args.cache_len} must be a positive number of slots")
    run = load_trained_run(args.run_dir)
    model = run.config.model
    cache_len = args.cache_len if args.cache_len is not None else model.max_seq_len
    learned = model.positions == "learned"

    tokenizer = run.tokenizer
    prompt_ids = [int(t) for t in tokenizer.encode(args.prompt)] or [tokenizer.eot_id]
    # A model with learned positions reads at most max_seq_len tokens, whatever the cache's length.
    if learned and len(prompt_ids) >= model.max_seq_len:
        raise UserError(_learned_positions_full(len(prompt_ids), args.max_new_tokens, model.max_seq_len))
    check_cache_length(model, cache_len, option="--cache-len")
    if len(prompt_ids) >= cache_len:
        longest = f" (up to max_seq_len={model.max_seq_len}, the model's learned positions)" if learned else ""
        raise UserError(
            f"the prompt is {len(prompt_ids)} tokens but the KV cache has {cache_len} slots, leaving no room to "
            f"generate; shorten the prompt or raise --cache-len{longest}"
        )
    check_cache_fits(model, cache_len, option="--cache-len")
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
    elif args.continuation_only:
        print(continuation)
    else:
        print(args.prompt + continuation)
    if reason == "cache_full" and learned and cache_len >= model.max_seq_len:
        log.warning(
            "generation stopped after %d tokens: prompt plus new tokens reached max_seq_len=%d, the model's "
            "learned positions; %s",
            len(result.tokens[0]), model.max_seq_len, _learned_positions_fix(args.max_new_tokens, model.max_seq_len),
        )
    elif reason == "cache_full":
        log.warning(
            "generation stopped after %d tokens: the KV cache of %d slots is full; raise --cache-len "
            "(RoPE models only, beyond the trained max_seq_len=%d quality may drop)",
            len(result.tokens[0]), cache_len, model.max_seq_len,
        )
    return 0


def _learned_positions_full(prompt_tokens: int, new_tokens: int, max_seq_len: int) -> str:
    """Return the message for a prompt that leaves no room to generate in a model with learned positions."""
    return (f"the prompt is {prompt_tokens} tokens and --max-new-tokens asks for {new_tokens} more, but this model "
            f"has learned positions for max_seq_len={max_seq_len} tokens, so prompt plus new tokens must fit in "
            f"{max_seq_len}; {_learned_positions_fix(new_tokens, max_seq_len)}")


def _learned_positions_fix(new_tokens: int, max_seq_len: int) -> str:
    """Return how to fit prompt plus new tokens into max_seq_len: the model has no positions beyond it."""
    if new_tokens < max_seq_len:
        return f"shorten the prompt to at most {max_seq_len - new_tokens} tokens"
    return f"lower --max-new-tokens to at most {max_seq_len - 1} and shorten the prompt to fit beside it"
