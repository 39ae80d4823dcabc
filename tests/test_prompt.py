"""Prompt tuning and P-tuning against Hugging Face peft on the same tiny random BERT classifier (same prompt
weights, equal logits), shapes, and that only the prompt and the head train."""
import numpy as np
import pytest
from mindspore import Tensor

from mindllm.convert import from_hf
from mindllm.errors import UserError
from mindllm.peft import apply_prompt, trainable_report
from test_convert import BERT_HF, hf_model, i32, inputs, saved

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
ARCH = "BertForSequenceClassification"


def logits(model, ids, tt, mask):
    return model(i32(ids), i32(tt), i32(mask)).asnumpy()


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_soft_prompts_equal_peft(method, tmp_path):
    hf = hf_model(ARCH)
    model = from_hf(saved(hf, tmp_path), log=None)
    apply_prompt(model, method, k=5, encoder_hidden=16, train_also=("classifier.",))
    rng = np.random.default_rng(3)
    for n, p in model.parameters_and_names():  # visible, non-default prompt weights
        if n.startswith("prompt."):
            p.set_data(Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    if method == "prompt":
        cfg = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5)
    else:
        cfg = peft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=5, encoder_hidden_size=16,
                                       encoder_reparameterization_type="MLP")
    wrapped = peft.get_peft_model(hf, cfg).eval()
    ours = {n: p.asnumpy() for n, p in model.parameters_and_names() if n.startswith("prompt.")}
    theirs = {"prompt.embedding": "prompt_encoder.default.embedding.weight"}
    for i, j in enumerate((0, 2, 4)):  # peft's Sequential puts ReLUs at 1 and 3
        for what in ("weight", "bias"):
            theirs[f"prompt.mlp_head.{i}.{what}"] = f"prompt_encoder.default.mlp_head.{j}.{what}"
    params = dict(wrapped.named_parameters())
    with torch.no_grad():
        for name, value in ours.items():
            params[theirs[name]].copy_(torch.tensor(value))
    ids, tt, mask = inputs(BERT_HF["vocab_size"])
    with torch.no_grad():
        expected = wrapped(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt),
                           attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(logits(model, ids, tt, mask), expected, atol=1e-4)


def test_prompt_tuning_trains_only_the_prompt_and_head(tmp_path):
    model = from_hf(saved(hf_model(ARCH), tmp_path), log=None)
    apply_prompt(model, "prompt", k=4, init_ids=[5, 6, 7, 8], train_also=("classifier.",))
    np.testing.assert_array_equal(model.prompt.embedding.asnumpy(),
                                  model.bert.embeddings.word_embeddings.weight.asnumpy()[5:9])
    assert sorted(n for n, p in model.parameters_and_names() if p.requires_grad) == \
        ["classifier.bias", "classifier.weight", "prompt.embedding"]
    assert trainable_report(model).startswith(f"trainable params: {4 * 32 + 32 * 3 + 3:,} ||")
    ids, tt, mask = inputs(BERT_HF["vocab_size"])
    assert logits(model, ids, tt, mask).shape == (2, 3)


def test_prompt_longer_than_the_positions():
    from mindllm.models.bert import BertConfig, BertForSequenceClassification

    with pytest.raises(UserError, match="do not fit"):
        apply_prompt(BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                              num_attention_heads=2, intermediate_size=8,
                                                              max_position_embeddings=8)), "prompt", k=8)
