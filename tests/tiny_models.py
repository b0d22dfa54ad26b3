"""Tiny real transformers causal LMs for tests, built in seconds and saved like hub models.

:func:`build_tiny_model` writes a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer``
(and so :func:`ingest.models.load_model`) load exactly as they load a hub checkpoint: a
``LlamaForCausalLM`` (2 layers, hidden size 64) in safetensors, a byte-level BPE tokenizer
made with the ``tokenizers`` library wrapped in ``PreTrainedTokenizerFast`` with a ChatML
chat template, and a ``generation_config.json`` whose ``eos_token_id`` lists ``<|im_end|>``
and ``<|endoftext|>``.

With ``train_steps=0`` the weights are random (``init_std`` sets how peaked the next-token
distributions are). With ``train_steps > 0`` the model is first trained briefly on
:data:`TRAINING_ANSWERS`, so that it answers the tiny prompts with a short answer and then
``<|im_end|>`` most of the time (realistic trees: a few likely answers, EOS, some chatter).
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# prompt -> (answer, weight): the planted answer distributions of the trained variant
TRAINING_ANSWERS: dict[str, list[tuple[str, float]]] = {
    "Pick a random digit.": [
        ("7", 0.35),
        ("3", 0.2),
        ("4", 0.1),
        ("Sure! 7", 0.1),
        ("I pick 5.", 0.1),
        ("9", 0.05),
        ("2\n", 0.05),
        ("My digit is 8", 0.05),
    ],
    "Flip a coin.": [("Heads", 0.5), ("Tails", 0.3), ("heads.", 0.1), ("It is tails", 0.1)],
    "Name a color.": [("blue", 0.4), ("red", 0.3), ("green", 0.2), ("Blue!", 0.1)],
}
PROMPTS = tuple(TRAINING_ANSWERS)


def make_tokenizer(corpus: list[str]):
    """A small byte-level BPE tokenizer (vocabulary ~ 350) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        chat_template=CHAT_TEMPLATE,
    )


def chat_text(prompt: str, answer: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>"


def training_texts(seed: int, per_prompt: int = 40) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for prompt, answers in TRAINING_ANSWERS.items():
        options, weights = zip(*answers)
        texts += [chat_text(prompt, a) for a in rng.choices(options, weights, k=per_prompt)]
        # the plain scaffold of catalog.prompting, answers ending at a newline
        texts += [f"Question: {prompt}\nAnswer: {a.strip()}\n" for a in options]
    rng.shuffle(texts)
    return texts


def build_tiny_model(
    directory: str | Path,
    *,
    seed: int = 0,
    train_steps: int = 0,
    init_std: float = 0.02,
    hidden_size: int = 64,
    heads: int = 4,
) -> Path:
    """Build, optionally train, and save a tiny chat model in ``directory``; return the path.

    ``hidden_size`` / ``heads`` is the head size: vLLM's CPU attention refuses small ones
    (16 works in transformers, not there), so vLLM tests use 128 / 2 (head size 64).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    texts = training_texts(seed)
    tokenizer = make_tokenizer(texts)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=256,
        initializer_range=init_std,
        bos_token_id=None,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if train_steps:
        _train(model, tokenizer, texts, train_steps, seed)
    model.eval()
    # sampling defaults that a hub checkpoint might ship; the catalog must ignore them
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        top_k=20,
        temperature=0.8,
        do_sample=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def pickle_copy(source: str | Path, directory: str | Path) -> Path:
    """A copy of a saved model whose weights are only ``pytorch_model.bin`` (a pickle), like
    old hub checkpoints (transformers 5 itself writes only safetensors)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    shutil.copytree(source, directory)
    weights = directory / "model.safetensors"
    torch.save(load_file(weights), directory / "pytorch_model.bin")
    weights.unlink()
    return directory


def _train(model, tokenizer, texts: list[str], steps: int, seed: int) -> None:
    """``steps`` AdamW steps on minibatches of the tiny corpus (a few seconds on one core)."""
    import torch

    batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    # Tiny ops gain nothing from threads, and on a busy 2-core machine threads that spin-wait
    # for each other make training several times slower.
    torch.set_num_threads(1)
    try:
        _train_steps(model, batch, labels, optimizer, generator, steps)
    finally:
        torch.set_num_threads(threads)


def _train_steps(model, batch, labels, optimizer, generator, steps: int) -> None:
    import torch

    for _ in range(steps):
        rows = torch.randperm(len(labels), generator=generator)[:64]
        loss = model(
            input_ids=batch["input_ids"][rows],
            attention_mask=batch["attention_mask"][rows],
            labels=labels[rows],
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


_BUILT: dict[tuple, Path] = {}


def cached_tiny_model(tmp_path_factory, **kwargs) -> Path:
    """:func:`build_tiny_model` once per test session for each set of arguments."""
    key = tuple(sorted(kwargs.items()))
    if key not in _BUILT:
        _BUILT[key] = build_tiny_model(tmp_path_factory.mktemp("tiny_model"), **kwargs)
    return _BUILT[key]


def gguf_copy(source: str | Path, directory: str | Path, name: str = "tiny.gguf") -> Path:
    """Write a saved tiny model as a float32 GGUF file ``directory/name`` (llama.cpp's layout:
    tensor names, rotary-permuted q/k weights, byte-level BPE vocabulary and merges, chat
    template), so the ``gguf_file`` loading path can be tested without a download."""
    import json

    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    source, directory = Path(source), Path(directory)
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    weights = {k: v.float().numpy() for k, v in load_file(source / "model.safetensors").items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    def rotary_permuted(w: np.ndarray, n_head: int) -> np.ndarray:
        # llama.cpp interleaves the rotary halves of q and k; transformers undoes it on load
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    directory.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(directory / name, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in special else 1 for token, _ in vocab])  # 3 = control
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        writer.add_tensor(blk + "attn_norm.weight", weights[hf + "input_layernorm.weight"])
        writer.add_tensor(
            blk + "attn_q.weight", rotary_permuted(weights[hf + "self_attn.q_proj.weight"], heads)
        )
        writer.add_tensor(
            blk + "attn_k.weight",
            rotary_permuted(weights[hf + "self_attn.k_proj.weight"], kv_heads),
        )
        writer.add_tensor(blk + "attn_v.weight", weights[hf + "self_attn.v_proj.weight"])
        writer.add_tensor(blk + "attn_output.weight", weights[hf + "self_attn.o_proj.weight"])
        writer.add_tensor(blk + "ffn_norm.weight", weights[hf + "post_attention_layernorm.weight"])
        for part in ("gate", "up", "down"):
            writer.add_tensor(blk + f"ffn_{part}.weight", weights[hf + f"mlp.{part}_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return directory
