"""Logits in float32 from a model loaded below float32 (the tree sampler's head).

A model in bfloat16 or float16 rounds its logits to its dtype; the softmax would carry that
rounding. :class:`Float32Head` applies the model's output layer to the final hidden states
with float32 results instead, where the head is a plain linear layer (docs/ingest.md).
"""

from __future__ import annotations

# Bytes of output-layer weights upcast to float32 at once (the float32 head works in vocabulary
# chunks so no float32 copy of the whole weight is ever held)
HEAD_CHUNK_BYTES = 1 << 26
# Config fields of families that transform the head's output (Gemma 2/3 softcapping, Cohere's
# scale, Granite's divisor): their own forward computes the logits
HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class Float32Head:
    """A plain ``nn.Linear`` output layer applied with float32 results; call it on hidden
    states of shape (rows, width) to get float32 logits (rows, vocabulary)."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self._out_dtype_mm = True  # until torch refuses it

    def __call__(self, hidden):
        """The output layer in float32 on the final hidden states: a model loaded below
        float32 rounds its logits to its dtype (bfloat16: ~3 significant digits, 0.06 on a
        logit of 16, which shifts a token's probability by ~6%), and the softmax would carry
        that rounding. Products of two bfloat16 (or float16) numbers are exact in float32, so
        a matrix product with float32 output (CUDA's ``mm`` with ``out_dtype``: no copy of
        the weight) gives the float32 head's numbers; elsewhere the weight is upcast in
        vocabulary chunks of HEAD_CHUNK_BYTES (on a CPU ~10x the bfloat16 head's time, for
        SmolLM2-1.7B's head shape; docs/ingest.md)."""
        import torch

        head = self.layer
        weight = head.weight
        hidden = hidden.to(weight.device)
        logits = None
        if self._out_dtype_mm and weight.device.type == "cuda" and hidden.dtype == weight.dtype:
            try:
                logits = torch.mm(hidden, weight.T, out_dtype=torch.float32)
            except (TypeError, RuntimeError, NotImplementedError):  # torch without it
                self._out_dtype_mm = False
        if logits is None:
            hidden = hidden.float()
            vocab, width = weight.shape
            logits = torch.empty((len(hidden), vocab), dtype=torch.float32, device=weight.device)
            step = max(1, HEAD_CHUNK_BYTES // (4 * width))
            for start in range(0, vocab, step):
                logits[:, start:start + step] = hidden @ weight[start:start + step].float().T
        if head.bias is not None:
            logits += head.bias.float()
        return logits

    @classmethod
    def for_model(cls, model, eos_token_ids: list[int]) -> Float32Head | None:
        """The float32 head of ``model`` if it can replace the model's own, else None (the
        model's own logits, upcast after its head, are used).

        Only for models below float32 whose head is a plain ``nn.Linear`` applied to the
        base model's last hidden state, with nothing after it: families that scale or cap
        the head's output (HEAD_TRANSFORMS), wrappers whose base model is themselves, heads
        offloaded by accelerate (weights on "meta"), and any model whose own logits on a
        probe do not match the float32 head within its dtype's rounding keep their own."""
        import torch

        weight = next(model.parameters())
        if not weight.is_floating_point() or weight.element_size() >= 4:
            return None
        head = model.get_output_embeddings()
        config = model.config.get_text_config()
        if (
            type(head) is not torch.nn.Linear
            or head.weight.device.type == "meta"
            or model.base_model is model
            or any(getattr(config, name, None) not in (None, 1, 1.0) for name in HEAD_TRANSFORMS)
        ):
            return None
        probe = torch.tensor([eos_token_ids[:1] + list(range(min(head.weight.shape[0], 7)))],
                             device=model.device)
        with torch.inference_mode():
            own = model(input_ids=probe).logits[:, -1].float()
            hidden = model.base_model(input_ids=probe).last_hidden_state[:, -1]
            float32_head = cls(head)
            ours = float32_head(hidden).to(own.device)
        # both are the same products summed in float32; only the model's final rounding to
        # its dtype (2^-8 relative in bfloat16) and its summation order may differ
        if own.shape != ours.shape or not bool(
            ((own - ours).abs() <= 2 ** -6 * ours.abs().amax() + 1e-3).all()
        ):
            return None
        return float32_head
