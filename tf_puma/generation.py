"""Secure token generation with the KV cache kept secret-shared on the parties.

A generation model comes from `tf-puma convert --generate` (`rewrites.convert.convert_generation`):
two secure signatures over one share bundle, `prefill` (the prompt, right-padded to the model's
prompt bucket) and `decode` (one token), both reading the cache window's shares and returning its
next shares. The shares never leave the parties: the client holds TensorFlow handles to tensors on
the party tasks and passes them to the next call. Each call is a new execution (fresh keys and
streams: no PRG output repeats across tokens).

What each side learns: the client its prompt and the generated tokens (and the logits, only if
the model owner exported them); the parties the prompt length and the step (public positions and
window mask), never a token.

    gen = tf_puma.load_generator("smollm2-gen")
    tokens = gen.generate(prompt_ids, max_new_tokens=16, on_token=print)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from tf_puma import runtime
from tf_puma.cluster import NUM_PARTIES, PartyUnavailable
from tf_puma.connection import Connection
from tf_puma.manifest import state_share_name
from tf_puma.secure_model import (_PARTY_FAULTS, SecureModel, _first_line, _party_in,
                                  read_manifest)


class SecureGenerator(SecureModel):
    """Greedy (secure argmax) or client-sampled generation with a converted generation model."""

    def __init__(self, model_dir: str, deadline_s: float | None = None,
                 connection: Connection | None = None):
        if read_manifest(model_dir).generation is None:
            raise ValueError(f"{model_dir} is not a generation model: convert the causal LM's "
                             "generate_step signature with `tf-puma convert --generate`")
        super().__init__(model_dir, "decode", deadline_s, connection)
        generation = self.manifest.generation
        self.window = int(generation["window"])
        self.prompt_tokens = int(generation["prompt_tokens"])
        self.state = {past: (entry["output"], tuple(entry["shape"]))
                      for past, entry in generation["state"].items()}
        self.prefill = self.library.signatures["prefill"]
        self.has_logits = "logits" in self.manifest.outputs
        self.last_logits: np.ndarray | None = None  # the last step's logits, if revealed
        self._empty_cache = self._empty_cache_function()

    def _extra_signatures(self) -> list[str]:
        return ["prefill"]

    def close(self) -> None:
        """Releases both signatures' functions and the empty cache's on the parties; later
        calls raise ModelClosed."""
        self.prefill = None
        # The empty cache's traced function leaves the parties with the signatures' (otherwise
        # at exit, after local parties stopped: one ERROR line per party).
        self._empty_cache = None
        super().close()

    @property
    def max_new_tokens(self) -> int:
        """Tokens one generation can produce: the prompt bucket and every new token but the
        last must fit in the window."""
        return self.window - self.prompt_tokens + 1

    def _empty_cache_function(self) -> Callable[[], dict[str, tf.Tensor]]:
        """A function (traced once, on the first generation) making the shares of an all-zero
        cache on the parties (every slot is masked out)."""
        specs = {name: shape for name, (_, shape) in self.state.items()}

        @tf.function
        def zeros():
            out = {}
            for party in range(NUM_PARTIES):
                with tf.device(runtime.device(party)):
                    for name, shape in specs.items():
                        for slot in (0, 1):
                            out[state_share_name(name, party, slot)] = tf.zeros(shape, tf.int64)
            return out

        return zeros

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 on_token: Callable[[int], Any] | None = None,
                 stop_tokens: Iterable[int] = (), temperature: float = 0.0,
                 seed: int | None = None) -> list[int]:
        """The next `max_new_tokens` tokens after `prompt_ids` (stops early after a token in
        `stop_tokens`); `on_token(id)` is called as each arrives. temperature 0: greedy, the
        parties' argmax; > 0: sampled on the client from the revealed logits (the model must
        reveal them). Raises PartyUnavailable if a party fails or restarts mid-generation (its
        cache shares are gone: generate again)."""
        prompt = [int(t) for t in prompt_ids]
        if not 1 <= len(prompt) <= self.prompt_tokens:
            raise ValueError(f"the prompt has {len(prompt)} tokens; this model takes 1 to "
                             f"{self.prompt_tokens} (its prompt bucket, fixed at conversion)")
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be 1..{self.max_new_tokens} (window "
                             f"{self.window} - prompt bucket {self.prompt_tokens} + 1)")
        if temperature > 0 and not self.has_logits:
            raise ValueError("sampling needs the logits, which this model does not reveal; "
                             "use temperature=0 (the parties' argmax)")
        rng = np.random.default_rng(seed)
        stops = set(int(t) for t in stop_tokens)
        self._ready()
        n, bucket = len(prompt), self.prompt_tokens
        valid = [0] * self.window + [1] * n + [0] * (bucket - n)
        feeds = {"input_ids": np.asarray([prompt + [prompt[-1]] * (bucket - n)], np.int32),
                 "position_ids": np.arange(bucket, dtype=np.int32)[None],
                 "attention_mask": np.asarray([valid], np.int32),
                 "last_index": np.asarray([n - 1], np.int32)}
        out = self._step(self.prefill, feeds, self._empty_cache(), 0)
        valid = valid[bucket:]
        tokens: list[int] = []
        while True:
            token = self._choose(out, temperature, rng)
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if len(tokens) == max_new_tokens or token in stops:
                return tokens
            valid = valid + [1]
            feeds = {"input_ids": np.asarray([[token]], np.int32),
                     "position_ids": np.asarray([[n + len(tokens) - 1]], np.int32),
                     "attention_mask": np.asarray([valid], np.int32),
                     "last_index": np.asarray([0], np.int32)}
            valid = valid[1:]
            out = self._step(self.signature, feeds, self._next_cache(out), len(tokens))

    def _next_cache(self, out: dict) -> dict[str, tf.Tensor]:
        """The returned present_* shares as the next call's past_* inputs (still handles)."""
        return {state_share_name(past, party, slot): out[state_share_name(present, party, slot)]
                for past, (present, _) in self.state.items()
                for party in range(NUM_PARTIES) for slot in (0, 1)}

    def _choose(self, out: dict, temperature: float, rng: np.random.Generator) -> int:
        if self.has_logits:
            self.last_logits = out["logits"].numpy().reshape(-1)
        if temperature <= 0:
            return int(out["next_token"].numpy().reshape(-1)[0])
        logits = self.last_logits.astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        return int(rng.choice(len(p), p=p / p.sum()))

    def _step(self, signature, feeds: dict, cache: dict, done: int) -> dict:
        """One secure call: the client's feeds plus the cache's shares (handles on the
        parties) in; next token (and logits) revealed, the next cache's shares left there."""
        shares = {name: cache[name] for name in signature.input_names if name not in feeds}
        args = {**{k: tf.constant(v) for k, v in feeds.items()}, **shares}
        try:
            return self._call_with_deadline(args, signature)
        except _PARTY_FAULTS as err:
            self._needs_reconnect = True
            lost = (f"generation stopped after {done} new token{'s' if done != 1 else ''}: "
                    "the KV cache shares held by the parties are gone; generate again")
            try:
                self.connection.check(timeout=5.0)
            except PartyUnavailable as down:
                raise PartyUnavailable(f"{down} ({lost})") from None
            party = _party_in(err)
            raise PartyUnavailable(
                f"party {party if party is not None else '?'} restarted during generation "
                f"({lost}; {_first_line(err)})") from None


def load_generator(model_dir: str, deadline_s: float | None = None,
                   connection: Connection | None = None) -> SecureGenerator:
    """A converted generation model (`tf-puma convert --generate`) for the process's
    connection (tf_puma.connect)."""
    return SecureGenerator(model_dir, deadline_s, connection)


runtime.exclude_from_autograph(globals())
