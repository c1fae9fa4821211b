"""Image and text towers: pooled features, patch/sentence tokens, LoRA targets and LoRA gradients."""

from __future__ import annotations

import pytest
import torch

from medlearn.errors import ConfigError
from medlearn.mama.config import ImageTowerConfig, TextTowerConfig
from medlearn.mama.modeling.image_tower import ImageTower
from medlearn.mama.modeling.text_tower import TextTower

IMAGE_ARCH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "patch_size": 8, "num_register_tokens": 4}  # fmt: skip
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
REPORTS = ["Procedure reported: screening. Breast composition: dense; Findings: none.", "Reason: screening."]


@pytest.mark.parametrize("patch_tokens", ["post_norm", "pre_norm"])
def test_image_tower_pools_all_tokens_before_final_norm(patch_tokens):
    cfg = ImageTowerConfig(name="random", image_size=32, arch=IMAGE_ARCH, patch_tokens=patch_tokens)
    tower = ImageTower(cfg).eval()
    norm = tower.backbone.layernorm
    with torch.no_grad():  # a non-trivial final LayerNorm (random init is weight 1, bias 0)
        g = torch.Generator().manual_seed(1)
        norm.weight.copy_(torch.rand(32, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(32, generator=g))
    captured = {}
    last_block = tower.backbone.encoder.layer[-1]
    hook = last_block.register_forward_hook(
        lambda m, i, o: captured.__setitem__("out", o[0] if isinstance(o, tuple) else o)
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = tower(x)
    hook.remove()
    tokens = captured["out"]  # (B, 1 + 4 + 16, D) output of the last block, no final norm
    assert tokens.shape == (2, 21, 32)
    torch.testing.assert_close(feats.pooled, tokens.mean(dim=1))
    if patch_tokens == "post_norm":  # the reference's x_norm_patchtokens: the final LayerNorm, by hand
        t = tokens[:, 5:].double()
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        expected = (t - mu) / torch.sqrt(var + tower.backbone.config.layer_norm_eps)
        expected = (expected * norm.weight.double() + norm.bias.double()).float()
        torch.testing.assert_close(feats.patches, expected, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(feats.patches, tokens[:, 5:])
    assert feats.patches.shape == (2, 16, 32)
    assert (
        not tower.backbone.layernorm.weight.requires_grad and not tower.backbone.layernorm.bias.requires_grad
    )
    assert tower.backbone.config._attn_implementation == "sdpa"


def test_frozen_image_tower_gets_no_gradient_and_keeps_its_weights():
    tower = ImageTower(ImageTowerConfig(name="random", image_size=32, arch=IMAGE_ARCH, trainable=False))
    assert not any(p.requires_grad for p in tower.parameters())
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    head = torch.nn.Linear(tower.width, 1)
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=0.1)
    out = tower(torch.randn(2, 3, 32, 32))
    head(out.patches).sum().backward()  # the head trains on the frozen features
    opt.step()
    assert head.weight.grad is not None
    for k, v in tower.state_dict().items():
        assert torch.equal(v, before[k]), k
    trainable = ImageTower(ImageTowerConfig(name="random", image_size=32, arch=IMAGE_ARCH))
    assert any(p.requires_grad for p in trainable.parameters())  # the default trains the backbone


def test_image_tower_rejects_bad_input_and_arch():
    tower = ImageTower(ImageTowerConfig(name="random", image_size=32, arch=IMAGE_ARCH))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tower(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="hiden_size"):
        ImageTower(ImageTowerConfig(name="random", image_size=32, arch={"hiden_size": 8}))


@pytest.mark.parametrize("arch,kind,sep", [(GPT2, "causal", "<|sep|>"), (BERT, "encoder", "[SEP]")])
def test_text_tower_sentences_and_pooling(arch, kind, sep):
    cfg = TextTowerConfig(
        name="random", arch=arch, max_length=64, lora_dropout=0.0, gradient_checkpointing=False
    )
    tower = TextTower(cfg).eval()
    assert tower.kind == kind and tower.tokenizer.separator == sep
    enc = tower.tokenizer(REPORTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        feats = tower(ids, mask)
        hidden = tower.lm(input_ids=ids, attention_mask=mask).last_hidden_state
    for b, report in enumerate(REPORTS):
        n_sent = report.count(".") + report.count(";")
        positions = [i for i in range(ids.shape[1]) if mask[b, i] and ids[b, i] == tower.tokenizer.sep_id]
        assert len(positions) == n_sent
        assert int(feats.sentence_mask[b].sum()) == n_sent
        for k, pos in enumerate(positions):
            torch.testing.assert_close(feats.sentences[b, k], hidden[b, pos])
        valid = [hidden[b, i] for i in range(ids.shape[1]) if mask[b, i]]
        torch.testing.assert_close(feats.pooled[b], torch.stack(valid).mean(dim=0))
    tower.cfg.pooling = "all_tokens"  # the reference's unmasked mean
    with torch.no_grad():
        torch.testing.assert_close(tower(ids, mask).pooled, hidden.mean(dim=1))


@pytest.mark.parametrize("arch,targets", [(GPT2, {"c_attn"}), (BERT, {"query", "value"})])
def test_lora_targets_and_gradients_with_checkpointing(arch, targets):
    cfg = TextTowerConfig(
        name="random", arch=arch, max_length=64, gradient_checkpointing=True, lora_dropout=0.0
    )
    tower = TextTower(cfg).train()
    assert tower.base_model().is_gradient_checkpointing
    lora = {n: p for n, p in tower.named_parameters() if "lora_" in n}
    assert {n.split(".lora_")[0].split(".")[-1] for n in lora} == targets
    assert all(p.requires_grad for p in lora.values())
    assert [n for n, p in tower.named_parameters() if p.requires_grad and "lora_" not in n] == []
    r = cfg.lora_r
    per_module = {"c_attn": r * (32 + 96), "query": r * 64, "value": r * 64}
    assert sum(p.numel() for p in lora.values()) == 2 * sum(per_module[t] for t in targets)
    with torch.no_grad():  # LoRA B starts at zero (then A gets no gradient): give it values first
        for n, p in lora.items():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    enc = tower.tokenizer(REPORTS)
    feats = tower(enc["input_ids"], enc["attention_mask"])
    (feats.pooled.pow(2).sum() + feats.sentences.pow(2).sum()).backward()
    for n, p in lora.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {n}"


def test_lora_target_override_and_unknown_architecture():
    cfg = TextTowerConfig(
        name="random", arch=GPT2, lora_target_modules=["c_proj"], gradient_checkpointing=False
    )
    names = {n for n, _ in TextTower(cfg).named_parameters() if "lora_A" in n}
    assert names and all(".c_proj." in n for n in names)
    bad = TextTowerConfig(
        name="random", arch={"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2}
    )
    with pytest.raises(ConfigError, match="lora_target_modules"):
        TextTower(bad)
    with pytest.raises(ConfigError, match="model_type"):
        TextTower(TextTowerConfig(name="random", arch={"n_embd": 8}))


# (anchor, paraphrase with few shared words, distractor sharing most words but not the meaning)
PARAPHRASE_TRIPLETS = [
    ("A man is playing a guitar.", "Someone performs music on an instrument.", "A man is eating a sandwich."),
    ("She bought a new car yesterday.", "Yesterday the woman purchased an automobile.", "She bought a new hat yesterday."),
    ("A child is riding a bicycle.", "A kid cycles down the street.", "A child is reading a book."),
    ("The cat sleeps on the sofa.", "A kitten naps on the couch.", "The cat eats on the floor."),
]  # fmt: skip


def _paraphrase_margins(tower: TextTower) -> list[float]:
    """cos(anchor, paraphrase) - cos(anchor, distractor) of the pooled features, per triplet."""
    margins = []
    for triplet in PARAPHRASE_TRIPLETS:
        with torch.no_grad():
            a, p, d = tower(**tower.tokenizer(list(triplet))).pooled
        cos = torch.nn.functional.cosine_similarity
        margins.append(float(cos(a, p, dim=0) - cos(a, d, dim=0)))
    return margins


def test_pretrained_minilm_text_tower_loads_offline():
    tower = TextTower(TextTowerConfig(name="minilm", max_length=32, gradient_checkpointing=False)).eval()
    assert tower.kind == "encoder" and tower.width == 384
    assert sum(p.numel() for n, p in tower.named_parameters() if p.requires_grad) == 6 * 2 * 8 * (384 + 384)
    # the same architecture and tokenizer with random weights: the control a "pre-trained" claim needs
    c = tower.base_model().config
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps")  # fmt: skip
    arch = {"model_type": c.model_type, **{k: getattr(c, k) for k in keys}}
    random = TextTower(TextTowerConfig(name="random", arch=arch, max_length=32, gradient_checkpointing=False))
    assert random.width == tower.width and random.tokenizer.tok.vocab == tower.tokenizer.tok.vocab
    # Mean-pooled random features are all close (cosine ~0.9) and follow shared words, so "related
    # reports have cosine > 0.5" holds for both.  Only trained weights rank a paraphrase with other
    # words above a sentence that shares the words but not the meaning.
    trained, untrained = _paraphrase_margins(tower), _paraphrase_margins(random.eval())
    assert min(trained) > 0.1, trained
    assert max(untrained) < 0.0, untrained


def _byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer without merges: one token per byte, spaces as 'Ġ'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def test_byte_level_report_tokens_match_the_reference_layout():
    """Separators right after the word (no lone 'Ġ' before them), report wrapped in start/end tokens."""
    from medlearn.mama.modeling.text_tower import ReportTokenizer

    tok = _byte_level_tokenizer()
    rt = ReportTokenizer(tok, "causal", 32, "<|sep|>", bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    enc = rt(["Age: 61. BI-RADS 2; ok.", "No."])
    got = [tok.convert_ids_to_tokens(ids.tolist()) for ids in enc["input_ids"]]
    s, e, sep, p = "<|startoftext|>", "<|endoftext|>", "<|sep|>", "<|pad|>"
    assert got[0] == [s, "A", "g", "e", ":", "Ġ", "6", "1", sep, "Ġ", "B", "I", "-", "R", "A", "D", "S", "Ġ", "2",
                      sep, "Ġ", "o", "k", sep, e]  # fmt: skip
    assert got[1] == [s, "N", "o", sep, e] + [p] * 20
    assert enc["attention_mask"][1].tolist() == [1] * 5 + [0] * 20
    none = ReportTokenizer(_byte_level_tokenizer(), "causal", 32, "<|sep|>")  # bos_token="" eos_token=""
    assert none.tok.convert_ids_to_tokens(none(["No."])["input_ids"][0].tolist()) == ["N", "o", sep]


def test_text_tower_wraps_reports_and_pads_to_max_length_for_all_tokens():
    cfg = TextTowerConfig(
        name="random", arch=GPT2, max_length=24, lora_r=0, gradient_checkpointing=False, padding="longest"
    )
    tower = TextTower(cfg).eval()
    enc = tower.tokenizer(["Findings: benign. Overall; ok."])
    tokens = tower.tokenizer.tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    # MiniLM's word-piece tokenizer (tiny towers) adds its own [CLS] ... [SEP] around ours
    assert tokens == ["[CLS]", "<|startoftext|>", "findings", ":", "benign", "<|sep|>", "overall", "<|sep|>",
                      "ok", "<|sep|>", "<|endoftext|>", "[SEP]"]  # fmt: skip
    assert enc["input_ids"].shape == (1, 12)  # masked_mean + padding=longest: padded to the longest report
    fixed = TextTower(TextTowerConfig(**{**cfg.__dict__, "padding": "max_length"})).eval()
    assert fixed.tokenizer(["Findings: benign."])["input_ids"].shape == (1, 24)  # the default: fixed shapes
    ref = TextTower(TextTowerConfig(**{**cfg.__dict__, "pooling": "all_tokens"})).eval()
    enc = ref.tokenizer(["Findings: benign.", "No."])
    assert enc["input_ids"].shape == (2, 24)  # all_tokens: always max_length, as the reference's 144
    with torch.no_grad():
        hidden = ref.lm(**enc).last_hidden_state
        pooled = ref(enc["input_ids"], enc["attention_mask"]).pooled
    torch.testing.assert_close(pooled, hidden.sum(dim=1) / 24)


def test_encoder_tokenizer_without_separator_is_refused():
    from medlearn.mama.modeling.text_tower import ReportTokenizer

    class NoSep:
        sep_token = None

    with pytest.raises(ConfigError, match="sep_token"):
        ReportTokenizer(NoSep(), "encoder", 16)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", [GPT2, BERT])
def test_sentence_context_sentence_equals_each_sentence_encoded_alone(arch, attn):
    """``sentence_context: sentence``: a sentence feature is the separator state of the model run on
    that sentence's tokens alone (at their positions in the report); the pooled feature is unchanged."""
    common = dict(name="random", arch=arch, max_length=64, lora_dropout=0.0, gradient_checkpointing=False,
                  attn_implementation=attn)  # fmt: skip
    report_tower = TextTower(TextTowerConfig(**common)).eval()
    tower = TextTower(TextTowerConfig(**common, sentence_context="sentence")).eval()
    tower.load_state_dict(report_tower.state_dict())
    enc = tower.tokenizer(REPORTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        feats, ref = tower(ids, mask), report_tower(ids, mask)
        torch.testing.assert_close(feats.pooled, ref.pooled)
        assert torch.equal(feats.sentence_mask, ref.sentence_mask)
        for b in range(len(REPORTS)):
            seps = [i for i in range(ids.shape[1]) if mask[b, i] and ids[b, i] == tower.tokenizer.sep_id]
            start = 0
            for k, pos in enumerate(seps):
                alone = tower.lm(
                    input_ids=ids[b : b + 1, start : pos + 1],
                    position_ids=torch.arange(start, pos + 1)[None],
                ).last_hidden_state[0, -1]
                torch.testing.assert_close(feats.sentences[b, k], alone, atol=1e-5, rtol=1e-5)
                if k > 0:  # the report context did change every later sentence's feature
                    assert not torch.allclose(ref.sentences[b, k], alone, atol=1e-3)
                start = pos + 1


def test_sentence_context_rejects_flash_attention():
    cfg = TextTowerConfig(name="random", arch=GPT2, sentence_context="sentence", attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError, match="sentence_context=sentence"):
        TextTower(cfg)


@pytest.mark.parametrize("arch,fields", [(BERT, ("hidden_dropout_prob", "attention_probs_dropout_prob")),
                                         (GPT2, ("resid_pdrop", "embd_pdrop", "attn_pdrop"))])  # fmt: skip
def test_text_dropout_switch_sets_the_language_models_dropout(arch, fields):
    common = dict(name="random", arch=arch, max_length=64, lora_dropout=0.0, gradient_checkpointing=False)
    kept = TextTower(TextTowerConfig(**common))
    off = TextTower(TextTowerConfig(**common, dropout=0.0))
    assert all(getattr(kept.base_model().config, f) == 0.1 for f in fields)  # transformers' defaults
    assert all(getattr(off.base_model().config, f) == 0.0 for f in fields)
    assert {m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert {m.p for m in off.modules() if isinstance(m, torch.nn.Dropout)} <= {0.0}
    enc = off.tokenizer(REPORTS)
    off.train(), kept.train()
    torch.manual_seed(0)
    a, b = (off(enc["input_ids"], enc["attention_mask"]).pooled for _ in range(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # training mode, and yet deterministic
    c, d = (kept(enc["input_ids"], enc["attention_mask"]).pooled for _ in range(2))
    assert not torch.equal(c, d)


def test_text_dropout_on_the_pretrained_minilm_keeps_its_weights():
    common = dict(name="minilm", max_length=32, gradient_checkpointing=False)
    kept, off = TextTower(TextTowerConfig(**common)), TextTower(TextTowerConfig(**common, dropout=0.0))
    assert kept.base_model().config.hidden_dropout_prob == 0.1  # the published config
    assert off.base_model().config.attention_probs_dropout_prob == 0.0
    for (name, p), q in zip(kept.state_dict().items(), off.state_dict().values()):
        assert torch.equal(p, q), name


def test_text_dropout_is_validated():
    from medlearn.mama.config import MamaConfig, validate

    cfg = MamaConfig()
    cfg.model.text.dropout = 1.0
    with pytest.raises(ConfigError, match=r"model.text.dropout must be in \[0, 1\)"):
        validate(cfg)
