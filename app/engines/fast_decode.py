"""Our own decoding loop for T5/mT5: a static KV cache, one fused step, and on CUDA one captured graph.

`generate` in transformers spends a decode step of mT5-base on a GPU in Python and kernel launches
(about 20 ms where the arithmetic needs a fraction of one). Here a step is a fixed sequence of
kernels over buffers allocated once per shape, so on CUDA it is captured once as a CUDA graph and
replayed: one launch per token for the whole decoder.

What makes it cheap:
- the self-attention cache is a preallocated tensor written in place at the step's position, and
  the relative position bias of every step is one row of a table computed once;
- the prompt's cross-attention keys and values are computed once for all layers by one matrix
  product, and stored once per prompt, not per variant: the variants of one prompt are that
  prompt's query positions in cross-attention (it has no position bias and no causal mask), so
  the n variants cost the memory of one;
- query, key and value of self-attention are one matrix product;
- sampling works on the top k logits only (top-p within them, as transformers does it after
  top-k), and checks for the end of every row only every few steps, to keep the GPU fed.

The arithmetic is the model's own: its layer norms, feed-forward blocks, embedding, relative
position bias and lm_head are called as they are; only attention and the cache are ours. In
float32 its greedy output equals `generate`'s token for token (tests/test_fast_decode.py, and
`python -m bench.equivalence` on a GPU); at every load, HFEngine has app/engines/decoder_check.py prove it
on the device it will serve on (`teacher_forced` below), or serves with `generate`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.params import GenerationParams

log = logging.getLogger(__name__)

# Bytes of attention keys and values one pass may hold: the variants' own (self-attention: a row per
# variant, a position per new token) and their prompts' (cross-attention: once per prompt, a position per
# prompt token). For mT5-base in bfloat16, 64 prompts of up to 64 tokens with 3 variants of 32 new tokens
# take 377 MB (226 of them self-attention). Longer prompts or outputs run fewer prompts per pass, so what
# clients send never takes more.
CACHE_BUDGET_BYTES = 384 * 2**20
# Buffers kept between calls for their shapes (graphs replay on them), the call's own included, least
# recently used dropped first: at most this many shapes, and at most KEPT_BYTES of caches and logits.
# With the weights (1.2 GB) and one pass's passing tensors, serving stays within about 2.5 GB of GPU memory.
MAX_GRAPHS = 8
KEPT_BYTES = 512 * 2**20
# On CUDA, rows are checked for their end token every this many steps (each check waits for the GPU).
CHECK_EVERY_CUDA = 8


def supports(model, dtype) -> bool:
    """The fast loop serves T5-family models with gated or plain feed-forward in float32 or bfloat16.

    float16 stays with `generate`: T5's float16 clamping lives in its blocks, not in this loop."""
    config = model.config
    return (config.model_type in ("t5", "mt5") and dtype in (torch.float32, torch.bfloat16)
            and not getattr(config, "is_decoder", False) and hasattr(model, "get_decoder"))


def kv_bytes(config, dtype) -> int:
    """Bytes of attention keys and values, over all decoder layers, for one row at one position."""
    return config.num_decoder_layers * 2 * config.num_heads * config.d_kv * dtype.itemsize


def _bucket(value: int, smallest: int, factor: int = 2) -> int:
    """The first of smallest, smallest*factor, smallest*factor**2, ... at or above `value`."""
    size = smallest
    while size < value:
        size *= factor
    return size


def _prompt_bucket(prompts: int) -> int:
    """Prompts per pass, rounded up to 1, 4, 16, 64, ...: a GPU step costs about the same for 3 rows as
    for 192 (it reads the weights either way), so few shapes, and few graph captures, serve all."""
    return _bucket(prompts, 1, 4)


def _prompt_bucket_within(limit: int) -> int:
    """The largest prompt bucket not above `limit` (at least 1)."""
    size = 1
    while size * 4 <= limit:
        size *= 4
    return size


# Prompt tokens are rounded up to 64, 128, 256, 512: cross-attention over padding costs next to nothing.
SOURCE_BUCKET = 64
# New tokens are rounded up to 16, 32, 64, ...
STEPS_BUCKET = 16


@dataclass(frozen=True)
class _Shape:
    prompts: int  # prompts in the call (rows of cross-attention)
    per_prompt: int  # variants per prompt (query positions in cross-attention)
    source: int  # encoder positions
    steps: int  # decoder positions (new tokens)

    @property
    def rows(self) -> int:
        return self.prompts * self.per_prompt


class _Buffers:
    """Everything one decoder step reads and writes, allocated once for one shape."""

    def __init__(self, decoder: "FastDecoder", shape: _Shape) -> None:
        d, device, dtype = decoder, decoder.device, decoder.dtype
        self.shape = shape
        self.tokens = torch.zeros(shape.rows, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        # [layer, key/value, row, head, position, head dim]
        self.self_cache = torch.zeros(d.layers, 2, shape.rows, d.heads, shape.steps, d.head_dim,
                                      dtype=dtype, device=device)
        self.cross_cache = torch.zeros(d.layers, 2, shape.prompts, d.heads, shape.source, d.head_dim,
                                       dtype=dtype, device=device)
        self.cross_mask = torch.zeros(shape.prompts, 1, 1, shape.source, dtype=dtype, device=device)
        self.self_bias = d.self_bias(shape.steps)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, cross: torch.Tensor, mask: torch.Tensor) -> None:
        """Put a call's cross-attention keys/values and encoder mask in; unused rows attend freely."""
        prompts, source = cross.shape[2], cross.shape[4]
        self.cross_cache[:, :, :prompts, :, :source].copy_(cross)
        self.cross_mask.fill_(torch.finfo(self.cross_mask.dtype).min)
        self.cross_mask[:prompts, ..., :source].copy_(mask)
        self.cross_mask[prompts:].zero_()


class FastDecoder:
    """Decodes a batch of encoded prompts into token ids with the model's own weights."""

    def __init__(self, model, *, use_graphs: bool, reuse_buffers: bool | None = None) -> None:
        """use_graphs: capture each shape's step as a CUDA graph (on CUDA only). reuse_buffers (default:
        as use_graphs): round shapes up to a few sizes and keep their buffers between calls, as
        graphs need; tests turn it on alone to check the rounding and the reuse on CPU."""
        config = model.config
        decoder = model.get_decoder()
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.layers = config.num_decoder_layers
        self.heads = config.num_heads
        self.head_dim = config.d_kv
        self.inner = self.heads * self.head_dim
        self.kv_bytes = kv_bytes(config, self.dtype)
        self.vocab = config.vocab_size
        self.start_token = config.decoder_start_token_id
        self.eos_token = config.eos_token_id
        self.pad_token = config.pad_token_id
        self.embed = decoder.embed_tokens
        self.final_norm = decoder.final_layer_norm
        self.lm_head = model.lm_head
        # T5 checkpoints that tie lm_head to the embedding scale the decoder output first; mT5 never does.
        self.output_scale = config.d_model**-0.5 if getattr(config, "scale_decoder_outputs", False) else None
        self.blocks = []
        for block in decoder.block:
            own, cross, feed_forward = block.layer
            attention, encoder_attention = own.SelfAttention, cross.EncDecAttention
            self.blocks.append((
                own.layer_norm,
                torch.cat([attention.q.weight, attention.k.weight, attention.v.weight]),
                attention.o.weight,
                cross.layer_norm,
                encoder_attention.q.weight,
                encoder_attention.o.weight,
                feed_forward,
            ))
        self.position_attention = decoder.block[0].layer[0].SelfAttention
        # Every layer's cross-attention keys and values in one product: [layers * 2 * inner, d_model].
        self.cross_weight = torch.cat([w for block in decoder.block
                                       for w in (block.layer[1].EncDecAttention.k.weight,
                                                 block.layer[1].EncDecAttention.v.weight)])
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self.reuse_buffers = self.use_graphs if reuse_buffers is None else reuse_buffers
        self.graphs: OrderedDict[_Shape, _Buffers] = OrderedDict()
        self.graph_failures = 0
        self.pool = None

    def info(self) -> dict:
        return {"decoder": "fast, CUDA graphs" if self.use_graphs else "fast", "graphs_cached": len(self.graphs)}

    def self_bias(self, steps: int) -> torch.Tensor:
        """[1, heads, steps, steps]: the relative position bias of query t over keys, later keys masked."""
        bias = self.position_attention.compute_bias(steps, steps, device=self.device).to(self.dtype)
        later = torch.ones(steps, steps, dtype=torch.bool, device=self.device).triu(1)
        return bias.masked_fill(later, torch.finfo(self.dtype).min).contiguous()

    # --- one step -------------------------------------------------------------------------------

    def _step(self, buffers: _Buffers) -> torch.Tensor:
        """Logits [rows, vocab] for the tokens at `buffers.position`; writes that position's cache."""
        shape, position = buffers.shape, buffers.position
        rows = shape.rows
        x = self.embed(buffers.tokens)
        bias = buffers.self_bias.index_select(2, position)
        for layer, block in enumerate(self.blocks):
            norm, qkv_weight, out_weight, cross_norm, cross_q, cross_out, feed_forward = block
            query, key, value = (F.linear(norm(x), qkv_weight)
                                 .view(rows, 1, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4))
            cache = buffers.self_cache[layer]
            cache[0].index_copy_(2, position, key)
            cache[1].index_copy_(2, position, value)
            attended = F.scaled_dot_product_attention(query, cache[0], cache[1], attn_mask=bias, scale=1.0)
            x = x + F.linear(attended.transpose(1, 2).reshape(rows, 1, self.inner), out_weight)
            # Cross-attention: a prompt's variants are its query positions.
            query = (F.linear(cross_norm(x), cross_q)
                     .view(shape.prompts, shape.per_prompt, self.heads, self.head_dim).transpose(1, 2))
            cross = buffers.cross_cache[layer]
            attended = F.scaled_dot_product_attention(query, cross[0], cross[1], attn_mask=buffers.cross_mask,
                                                      scale=1.0)
            x = x + F.linear(attended.transpose(1, 2).reshape(rows, 1, self.inner), cross_out)
            x = feed_forward(x)
        x = self.final_norm(x)
        if self.output_scale is not None:
            x = x * self.output_scale
        return self.lm_head(x)[:, 0]

    def _graphed_step(self, buffers: _Buffers) -> torch.Tensor:
        """Replay the shape's captured step; capture it on first use. A failed capture runs eagerly."""
        if buffers.graph is None and buffers.logits is None:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up: kernels pick their algorithms outside the capture
                        self._step(buffers)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # One memory pool for every shape's graph: only one replays at a time, and what a
                # graph keeps between replays (its logits) stays referenced, so their transient
                # tensors may share memory.
                self.pool = self.pool if self.pool is not None else torch.cuda.graph_pool_handle()
                # thread_local: the server's other threads (a /readyz reading GPU memory) may touch CUDA
                # while this one captures.
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                    buffers.logits = self._step(buffers)
                buffers.graph = graph
            except RuntimeError as exc:  # an unsupported kernel: serve the shape eagerly
                self.graph_failures += 1
                buffers.logits = torch.empty(0)
                log.warning("CUDA graph capture failed for %s, running it eagerly: %s", buffers.shape, exc)
        if buffers.graph is None:
            return self._step(buffers)
        buffers.graph.replay()
        return buffers.logits

    def _shape(self, prompts: int, per_prompt: int, source: int, steps: int) -> _Shape:
        """A pass's shape: exact, or with reused buffers rounded up to few sizes, so that buffers and
        captured graphs serve many calls."""
        if not self.reuse_buffers:
            return _Shape(prompts, per_prompt, source, steps)
        return _Shape(_prompt_bucket(prompts), per_prompt, _bucket(source, SOURCE_BUCKET),
                      _bucket(steps, STEPS_BUCKET))

    def _buffers(self, shape: _Shape) -> _Buffers:
        if not self.reuse_buffers:
            return _Buffers(self, shape)
        if shape in self.graphs:
            self.graphs.move_to_end(shape)
            return self.graphs[shape]
        while self.graphs and (len(self.graphs) >= MAX_GRAPHS
                               or self.kept_bytes() + self.buffer_bytes(shape) > KEPT_BYTES):
            self.graphs.popitem(last=False)
        buffers = self.graphs[shape] = _Buffers(self, shape)
        return buffers

    def cache_bytes(self, shape: _Shape) -> int:
        """Self- and cross-attention keys and values of a pass of this shape."""
        return self.kv_bytes * (shape.rows * shape.steps + shape.prompts * shape.source)

    def buffer_bytes(self, shape: _Shape) -> int:
        """What a shape's buffers hold at most: its caches, and the logits a captured step keeps."""
        return self.cache_bytes(shape) + shape.rows * self.vocab * self.dtype.itemsize

    def kept_bytes(self) -> int:
        return sum(self.buffer_bytes(shape) for shape in self.graphs)

    # --- a whole call ---------------------------------------------------------------------------

    def prompts_per_call(self, steps: int, per_prompt: int, source: int) -> int:
        """Most prompts of `source` tokens one pass may take within the cache budget (at least one)."""
        return max(1, CACHE_BUDGET_BYTES // self.cache_bytes(_Shape(1, per_prompt, source, steps)))

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: GenerationParams,
                 per_prompt: int) -> list[torch.Tensor]:
        """Token ids of `per_prompt` outputs per prompt, prompt by prompt, as chunks of rows [rows, length]."""
        one = self._shape(1, per_prompt, input_ids.shape[1], params.max_length)
        limit = self.prompts_per_call(one.steps, per_prompt, one.source)
        if self.reuse_buffers:  # a pass's prompts are rounded up to a bucket: stay within the budget
            limit = _prompt_bucket_within(limit)
        return [self._generate(input_ids[start:start + limit], attention_mask[start:start + limit], params,
                               per_prompt)
                for start in range(0, input_ids.shape[0], limit)]

    def teacher_forced(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
        """Float32 logits [prompts, length, vocab] of each of `targets`' positions given the targets before
        it, one step at a time through the step `generate` runs (its captured graph where graphs are on):
        app/engines/decoder_check.py compares them with the model's own forward."""
        buffers = self._begin(input_ids, attention_mask, 1, targets.shape[1])
        prompts = input_ids.shape[0]
        step = self._graphed_step if self.use_graphs else self._step
        logits = []
        for t in range(targets.shape[1]):
            # A copy: a replayed graph writes its next logits over the same tensor.
            logits.append(step(buffers)[:prompts].to(torch.float32, copy=True))
            buffers.tokens[:prompts, 0].copy_(targets[:, t])
            buffers.position.add_(1)
        return torch.stack(logits, dim=1)

    def _begin(self, input_ids, attention_mask, per_prompt: int, steps: int) -> _Buffers:
        """The buffers of a pass, loaded with its prompts' cross-attention and set on the start token."""
        prompts, source = input_ids.shape
        buffers = self._buffers(self._shape(prompts, per_prompt, source, steps))
        hidden = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cross = (F.linear(hidden, self.cross_weight)
                 .view(prompts, source, self.layers, 2, self.heads, self.head_dim).permute(2, 3, 0, 4, 1, 5))
        mask = torch.zeros(prompts, 1, 1, source, dtype=self.dtype, device=self.device)
        mask.masked_fill_(attention_mask[:, None, None, :] == 0, torch.finfo(self.dtype).min)
        buffers.load(cross, mask)
        buffers.tokens.fill_(self.start_token)
        buffers.position.zero_()
        return buffers

    def _generate(self, input_ids, attention_mask, params: GenerationParams, per_prompt: int) -> torch.Tensor:
        buffers = self._begin(input_ids, attention_mask, per_prompt, params.max_length)
        shape = buffers.shape
        rows = input_ids.shape[0] * per_prompt
        finished = torch.zeros(shape.rows, dtype=torch.bool, device=self.device)
        finished[rows:] = True  # rows that only fill the shape's bucket
        output = torch.full((shape.rows, params.max_length), self.pad_token, dtype=torch.long, device=self.device)
        check_every = CHECK_EVERY_CUDA if self.device.type == "cuda" else 1
        step = self._graphed_step if self.use_graphs else self._step
        length = params.max_length
        for t in range(params.max_length):
            logits = step(buffers).float()
            if t < params.min_new_tokens:
                logits[:, self.eos_token] = float("-inf")
            chosen = _sample(logits, params) if params.do_sample else logits.argmax(-1)
            chosen = chosen.masked_fill(finished, self.pad_token)
            output[:, t] = chosen
            finished |= chosen == self.eos_token
            buffers.tokens.copy_(chosen.view(-1, 1))
            buffers.position.add_(1)
            if (t + 1) % check_every == 0 and bool(finished.all()):
                length = t + 1
                break
        return output[:rows, :length]


def _sample(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    """One token per row, as transformers samples: temperature, then top-k, then top-p.

    Only the k best logits are sorted (all of them when top_k is 0); top-p keeps the most probable
    tokens whose probability before them is below top_p, the same set as transformers' ascending rule."""
    if params.top_k:
        values, indices = logits.topk(min(params.top_k, logits.shape[-1]), dim=-1)
    else:
        values, indices = logits.sort(dim=-1, descending=True)
    values = values / params.temperature  # after the cut, which it does not change: k values, not the vocabulary
    if params.top_p < 1.0:
        probabilities = values.softmax(-1)
        before = probabilities.cumsum(-1) - probabilities
        values = values.masked_fill(before >= params.top_p, float("-inf"))
    picked = torch.multinomial(values.softmax(-1), 1)
    return indices.gather(-1, picked).squeeze(-1)
