"""Autoregressive generation: one prefill call fills a KV cache, then a compiled loop decodes token by token.

The flow of `Generator.generate(prompts, max_new_tokens)`:
1. Left-pad the prompts to the longest one and mark the padding in a token mask. Each row's positions count
   its real tokens only, so padding changes no logit of a real token.
2. Prefill: one forward call writes every prompt token into a preallocated cache and returns the logits
   of the last slot.
3. Decode: a `jax.lax.while_loop` samples one token per row, feeds it back through the model with the
   cache, and stops when every row has produced a stop token or the step budget is spent.
The decode loop compiles once per (batch size, cache length). The number of steps, the sampling settings
and the stop tokens are traced arguments, so later requests of the same shape run without compiling.

The prompt and the new tokens must fit in the cache together. With a cache of S slots and a prompt of P
tokens, at most S - P tokens are generated, and a row cut short that way ends with the reason "cache_full".
A cache whose decoding would not fit in the device's free memory (host RAM on the CPU) is rejected before
anything is allocated (models.kv_cache.check_cache_fits).

Sampling: temperature scales the logits (0 means greedy, the argmax), top-k keeps the k largest logits,
and top-p keeps the smallest set of most likely tokens whose probability reaches p (nucleus sampling,
Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"). Top-k applies first, then top-p.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from models.kv_cache import CacheFullError, KVCache, check_cache_fits, check_cache_length, init_cache
from models.transformer import Transformer
from scaling.config import ModelConfig
from scaling.errors import UserError

STOP_TOKEN_SLOTS = 8  # stop-token lists are padded to a multiple of this, so their length rarely recompiles
NO_TOKEN = -1  # padding of the stop-token list; it matches no token id
PAD_TOKEN = 0  # token id written into left padding and after a row stops; it is masked or ignored


@dataclass(frozen=True)
class Sampling:
    """Settings of the draw of each next token from the logits."""

    temperature: float = 1.0  # divides the logits; 0 selects the most likely token (greedy decoding)
    top_k: int = 0  # keep only the k most likely tokens (ties with the k-th are kept); 0 keeps all
    top_p: float = 1.0  # keep the most likely tokens until their probability reaches top_p; 1 keeps all
    seed: int = 0  # seed of the random draws; the same seed and inputs give the same tokens

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0 and np.isfinite(self.temperature)):
            raise UserError(f"temperature={self.temperature!r} must be a finite number >= 0 (0 means greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise UserError(f"top_k={self.top_k!r} must be an integer >= 0 (0 keeps every token)")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UserError(f"top_p={self.top_p!r} must lie in (0, 1] (1 keeps every token)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed={self.seed!r} must be an integer >= 0")


def sample_tokens(
    logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Return one token id per row, drawn with temperature, top-k and top-p (all traced scalars)."""
    vocab = logits_BxV.shape[-1]
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)

    # Ranks in descending order of logit; rank r is kept when r < k and the probability of ranks before r
    # is still below top_p, so the most likely token is always kept.
    sorted_BxV = -jnp.sort(-scaled_BxV, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    in_top_k_V = jnp.arange(vocab) < k
    sorted_BxV = jnp.where(in_top_k_V, sorted_BxV, -jnp.inf)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_ranks_B = jnp.sum(in_top_k_V & (mass_before_BxV < top_p), axis=-1)
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, kept_ranks_B[:, None] - 1, axis=-1)

    candidates_BxV = jnp.where(scaled_BxV >= threshold_Bx1, scaled_BxV, -jnp.inf)
    sampled_B = jax.random.categorical(key, candidates_BxV, axis=-1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@dataclass(frozen=True)
class Generation:
    """The outcome of one `generate` call: new tokens, why each row stopped, and timings."""

    tokens: list[list[int]]  # new tokens of each prompt, stop token excluded
    stop_reasons: list[str]  # per prompt: "stop_token", "max_new_tokens" or "cache_full"
    prompt_lengths: list[int]  # tokens of each prompt
    decode_steps: int  # iterations of the decode loop: tokens sampled per row
    prefill_s: float  # wall time of the prefill call, compilation excluded
    decode_s: float  # wall time of the decode loop, compilation excluded
    compile_s: float  # time spent compiling in this call (0 when the shapes were compiled before)

    @property
    def tokens_per_s(self) -> float:
        """Tokens sampled per second of decoding, summed over the batch."""
        return self.decode_steps * len(self.tokens) / self.decode_s if self.decode_s > 0 else float("nan")


class Generator:
    """Compiled prefill and decode for one model and its parameters, with a cache of `cache_len` slots.

    Generators of the same model config and cache length share their compiled steps.
    """

    def __init__(self, model: ModelConfig, params: dict, cache_len: int | None = None):
        self.model = model
        self.params = params
        self.cache_len = model.max_seq_len if cache_len is None else cache_len
        # Checked before any work, and without allocating: a cache too large to fit would fail only when
        # XLA allocates it, after compiling.
        check_cache_length(model, self.cache_len)
        check_cache_fits(model, self.cache_len)
        self._steps = _compiled_steps(model, self.cache_len)

    @property
    def trace_counts(self) -> Counter:
        """Times the prefill and decode functions of this model and cache length were traced (compiled)."""
        return self._steps.trace_counts

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        stop_tokens: Sequence[int] = (),
    ) -> Generation:
        """Generate up to `max_new_tokens` tokens after each prompt (token ids), all rows in one batch."""
        tokens_BxP, mask_BxP, lengths = self._pad_prompts(prompts)
        if len(prompts) > 1:  # the constructor checked the memory of one row
            check_cache_fits(self.model, self.cache_len, len(prompts))
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise UserError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        steps = min(max_new_tokens, self.cache_len - tokens_BxP.shape[1])
        stop_ids_T = _stop_id_array(stop_tokens, self.model.vocab_size)
        settings = (
            jnp.float32(sampling.temperature),
            jnp.int32(sampling.top_k),
            jnp.float32(sampling.top_p),
        )

        compile_started = time.perf_counter()
        prefill = self._steps.executable("prefill", self.params, tokens_BxP, mask_BxP)
        compile_s = time.perf_counter() - compile_started

        started = time.perf_counter()
        last_logits_BxV, cache = prefill(self.params, tokens_BxP, mask_BxP)
        jax.block_until_ready(last_logits_BxV)
        prefill_s = time.perf_counter() - started

        batch = len(prompts)
        if steps <= 0:
            reason = "max_new_tokens" if max_new_tokens == 0 else "cache_full"
            return Generation([[] for _ in range(batch)], [reason] * batch, lengths, 0, prefill_s, 0.0, compile_s)

        key = jax.random.key(sampling.seed)
        decode_args = (self.params, cache, last_logits_BxV, key, jnp.int32(steps), *settings, stop_ids_T)
        compile_started = time.perf_counter()
        decode = self._steps.executable("decode", *decode_args)
        compile_s += time.perf_counter() - compile_started

        started = time.perf_counter()
        new_BxS, counts_B, stopped_B, steps_run = jax.device_get(decode(*decode_args))
        decode_s = time.perf_counter() - started

        tokens, reasons = [], []
        for row in range(batch):
            tokens.append([int(t) for t in new_BxS[row, : counts_B[row]]])
            if stopped_B[row]:
                reasons.append("stop_token")
            elif steps == max_new_tokens:
                reasons.append("max_new_tokens")
            else:
                reasons.append("cache_full")
        return Generation(tokens, reasons, lengths, int(steps_run), prefill_s, decode_s, compile_s)

    def _pad_prompts(self, prompts: Sequence[Sequence[int]]) -> tuple[jax.Array, jax.Array, list[int]]:
        """Return left-padded prompts [B, P] int32, their token mask [B, P] and their lengths."""
        if len(prompts) == 0:
            raise UserError("no prompts given; pass at least one prompt of token ids")
        arrays = [np.asarray(prompt, dtype=np.int64).reshape(-1) for prompt in prompts]
        lengths = [len(array) for array in arrays]
        if min(lengths) == 0:
            raise UserError(f"prompt {lengths.index(0)} is empty; give every prompt at least one token")
        for index, array in enumerate(arrays):
            if array.min() < 0 or array.max() >= self.model.vocab_size:
                raise UserError(
                    f"prompt {index} has token ids outside [0, {self.model.vocab_size}); encode it with the run's tokenizer"
                )
        longest = max(lengths)
        if longest > self.cache_len:
            fix = ("shorten the prompt: a model with learned positions reads at most "
                   f"max_seq_len={self.model.max_seq_len} tokens, so a longer cache cannot help"
                   if self.model.positions == "learned" and self.cache_len >= self.model.max_seq_len
                   else "shorten the prompt or allocate a longer cache")
            raise CacheFullError(
                f"cache full: a prompt of {longest} tokens does not fit the cache of {self.cache_len} slots; {fix}"
            )
        tokens = np.full((len(arrays), longest), PAD_TOKEN, np.int32)
        mask = np.zeros((len(arrays), longest), bool)
        for row, array in enumerate(arrays):
            tokens[row, longest - len(array) :] = array
            mask[row, longest - len(array) :] = True
        return jnp.asarray(tokens), jnp.asarray(mask), lengths


class _CompiledSteps:
    """The jitted prefill and decode loop of one model config and cache length, and their executables."""

    def __init__(self, model: ModelConfig, cache_len: int):
        self.model = model
        self.cache_len = cache_len
        self.transformer = Transformer(model)
        self.trace_counts: Counter = Counter()
        self._jitted = {"prefill": jax.jit(self._prefill), "decode": jax.jit(self._decode)}
        self._executables: dict[tuple, object] = {}

    def executable(self, name: str, *args):
        """Return the compiled `name` step for the shapes of `args`, compiling it on first use."""
        key = (name, tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args)))
        if key not in self._executables:
            self._executables[key] = self._jitted[name].lower(*args).compile()
        return self._executables[key]

    def _prefill(self, params, tokens_BxP, mask_BxP) -> tuple[jax.Array, KVCache]:
        self.trace_counts["prefill"] += 1
        cache = init_cache(self.model, tokens_BxP.shape[0], self.cache_len)
        logits_BxPxV, cache = self.transformer.apply(
            {"params": params}, tokens_BxP, token_mask_BxL=mask_BxP, cache=cache
        )
        return logits_BxPxV[:, -1], cache

    def _decode(self, params, cache, logits_BxV, key, steps, temperature, top_k, top_p, stop_ids_T):
        """Return (tokens [B, S], tokens kept per row, rows stopped by a stop token, loop iterations run)."""
        self.trace_counts["decode"] += 1
        batch = logits_BxV.shape[0]

        def not_finished(carry):
            step, _, _, _, _, done_B, _ = carry
            return (step < steps) & ~jnp.all(done_B)

        def decode_one(carry):
            step, cache, logits_BxV, key, tokens_BxS, done_B, counts_B = carry
            key, draw_key = jax.random.split(key)
            token_B = sample_tokens(logits_BxV, draw_key, temperature, top_k, top_p)
            is_stop_B = jnp.any(token_B[:, None] == stop_ids_T[None, :], axis=-1)
            active_B = ~done_B
            tokens_BxS = tokens_BxS.at[:, step].set(jnp.where(active_B, token_B, PAD_TOKEN))
            counts_B = counts_B + (active_B & ~is_stop_B)
            done_B = done_B | is_stop_B
            # The sampled token is fed back even after the last step. It lands in slot P + step, which
            # the step budget S - P keeps inside the cache, and leaves the cache ready for a continuation.
            logits_Bx1xV, cache = self.transformer.apply({"params": params}, token_B[:, None], cache=cache)
            return step + 1, cache, logits_Bx1xV[:, 0], key, tokens_BxS, done_B, counts_B

        initial = (
            jnp.int32(0),
            cache,
            logits_BxV,
            key,
            jnp.full((batch, cache.capacity), PAD_TOKEN, jnp.int32),
            jnp.zeros(batch, bool),
            jnp.zeros(batch, jnp.int32),
        )
        steps_run, _, _, _, tokens_BxS, done_B, counts_B = jax.lax.while_loop(not_finished, decode_one, initial)
        return tokens_BxS, counts_B, done_B, steps_run


@functools.lru_cache(maxsize=16)
def _compiled_steps(model: ModelConfig, cache_len: int) -> _CompiledSteps:
    return _CompiledSteps(model, cache_len)


def generate(
    model: ModelConfig,
    params: dict,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_tokens: Sequence[int] = (),
    cache_len: int | None = None,
) -> Generation:
    """Generate with a one-off `Generator`; keep a Generator to reuse its compiled steps across calls."""
    return Generator(model, params, cache_len).generate(prompts, max_new_tokens, sampling, stop_tokens)


def _stop_id_array(stop_tokens: Sequence[int], vocab_size: int) -> jax.Array:
    stop = [int(t) for t in stop_tokens]
    bad = [t for t in stop if not 0 <= t < vocab_size]
    if bad:
        raise UserError(f"stop token {bad[0]} is outside the vocabulary [0, {vocab_size})")
    slots = STOP_TOKEN_SLOTS * max(1, -(-len(stop) // STOP_TOKEN_SLOTS))
    return jnp.asarray(stop + [NO_TOKEN] * (slots - len(stop)), jnp.int32)


class UncachedGreedy:
    """Greedy decoding that recomputes the whole prefix at every step: the reference the cache must match.

    The prefix is right-padded to a multiple of `bucket` tokens, so at most len / bucket shapes compile;
    right padding changes nothing at earlier positions under the causal mask.
    """

    def __init__(self, model: ModelConfig, params: dict, bucket: int = 64):
        if bucket < 1:
            raise ValueError(f"bucket={bucket} must be a positive number of tokens")
        self.model, self.params, self.bucket = model, params, bucket
        transformer = Transformer(model)

        def next_token(params, tokens_BxL, last_index):
            logits_BxLxV = transformer.apply({"params": params}, tokens_BxL)
            return jnp.argmax(logits_BxLxV[:, last_index], axis=-1).astype(jnp.int32)

        self._next_token = jax.jit(next_token)
        self._compiled: dict[tuple[int, int], object] = {}

    def compile(self, batch_size: int, max_length: int) -> float:
        """Compile every bucket up to `max_length` tokens; return the seconds it took."""
        started = time.perf_counter()
        for length in range(self.bucket, _round_up(max_length, self.bucket) + 1, self.bucket):
            if (batch_size, length) not in self._compiled:
                tokens = jnp.zeros((batch_size, length), jnp.int32)
                self._compiled[batch_size, length] = self._next_token.lower(self.params, tokens, jnp.int32(0)).compile()
        return time.perf_counter() - started

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> tuple[list[list[int]], float]:
        """Return (new tokens per prompt, decode seconds). Prompts must share one length; no stop tokens."""
        lengths = {len(prompt) for prompt in prompts}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError("UncachedGreedy needs non-empty prompts of one length")
        prompt_len = lengths.pop()
        total = prompt_len + max_new_tokens
        if self.model.positions == "learned" and total > self.model.max_seq_len:
            raise CacheFullError(f"{total} tokens exceed max_seq_len={self.model.max_seq_len} of learned positions")
        self.compile(len(prompts), total)

        buffer = np.zeros((len(prompts), _round_up(total, self.bucket)), np.int32)
        buffer[:, :prompt_len] = np.asarray(prompts, np.int32)
        started = time.perf_counter()
        for length in range(prompt_len, total):
            bucket_len = _round_up(length, self.bucket)
            step = self._compiled[len(prompts), bucket_len]
            buffer[:, length] = np.asarray(step(self.params, jnp.asarray(buffer[:, :bucket_len]), jnp.int32(length - 1)))
        seconds = time.perf_counter() - started
        return buffer[:, prompt_len:total].tolist(), seconds


def _round_up(value: int, multiple: int) -> int:
    return multiple * max(1, -(-value // multiple))
