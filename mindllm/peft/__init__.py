"""Parameter-efficient fine-tuning (参数高效微调): LoRA (lora.py), prompt tuning and P-tuning (prompt.py), and the
config's `peft:` section applied to a model (apply.py)."""
from .apply import add_peft  # noqa: F401
from .lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter, trainable_report, unmerge_lora  # noqa: F401
from .prompt import PromptEncoder, SoftPrompt, apply_prompt  # noqa: F401
